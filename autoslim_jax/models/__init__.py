"""The network registry: ``create_network(name, ...)`` builds a slimmable ``Network``.

``name`` is a registered name (``MODELS``) or a user's factory given by where it lives:
``'package.module:function'`` (importable) or ``'path/to/file.py:function'``. The factory returns
a plain ``flax.linen`` module (traced: ``plain_network.PlainNetwork``) or a ``Network`` built from
``autoslim_jax.layers``; nothing in the package needs to change, and the same name rebuilds the
network in other processes (latency worker, ``export.load_slim``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Callable

import flax.linen as nn

from autoslim_jax import training_mode
from autoslim_jax.models.base import LayerRecord, Network, trace_layers
from autoslim_jax.models.mnasnet import mnasnet
from autoslim_jax.models.mobilenet_v1 import mobilenet_v1
from autoslim_jax.models.mobilenet_v2 import mobilenet_v2
from autoslim_jax.models.resnet import resnet50

MODELS: dict[str, Callable[..., Network]] = {
    'mobilenet_v1': mobilenet_v1,
    'mobilenet_v2': mobilenet_v2,
    'mnasnet': mnasnet,
    'resnet50': resnet50,
}


def register(name: str, factory: Callable[..., Network]) -> None:
  """Adds a network factory (returning a ``Network``) under ``name``, for this process only;
  ``'module:function'`` names work in every process."""
  MODELS[name] = factory


def get_factory(name: str) -> Callable[..., Network]:
  """The factory of a registered name or of a ``'module:function'`` / ``'file.py:function'``."""
  if name in MODELS:
    return MODELS[name]
  if ':' in name:
    return _import_factory(name)
  close = difflib.get_close_matches(name, MODELS, n=1)
  hint = f' (did you mean {close[0]!r}?)' if close else ''
  raise ValueError(f'unknown model {name!r}{hint}; known models: {sorted(MODELS)}, or your own '
                   "as 'package.module:function' or 'path/to/file.py:function'")


def _import_factory(name: str) -> Callable[..., Network]:
  where, _, function = name.rpartition(':')
  if where.endswith('.py'):
    path = os.path.abspath(where)
    if not os.path.exists(path):
      raise ValueError(f'model {name!r}: no file {path}')
    module_name = f'autoslim_user_model_{abs(hash(path))}'
    module = sys.modules.get(module_name)
    if module is None:
      spec = importlib.util.spec_from_file_location(module_name, path)
      module = importlib.util.module_from_spec(spec)
      sys.modules[module_name] = module
      spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(where)
    except ImportError as e:
      raise ValueError(f'model {name!r}: cannot import module {where!r} ({e}); is it on the '
                       'Python path (or give a file path ending in .py)?') from None
  factory = getattr(module, function, None)
  if not callable(factory):
    raise ValueError(f'model {name!r}: {where} has no function {function!r}')
  return factory


def factory_parameters(name: str) -> tuple[str, ...]:
  """The keyword arguments the factory of model ``name`` takes."""
  return tuple(inspect.signature(get_factory(name)).parameters)


# The factory arguments that give a plain module's input shape: images of
# (image_size, image_size, in_channels), as the zoo's factories take them.
PLAIN_INPUT_ARGUMENTS = ('image_size', 'in_channels')


def create_network(name: str, mode_argument: str = '', **kwargs) -> Network:
  """Builds network ``name`` (registered or ``'module:function'``) with its factory's arguments.

  A factory may return a plain ``flax.linen`` module (at its max widths) instead of a
  ``Network``, or a ``flax.nnx`` module (wrapped as a linen one: ``nnx_modules``): it is
  traced (``plain_network.PlainNetwork``) on images of the shape its ``image_size`` and
  ``in_channels`` arguments give (from ``kwargs`` or their defaults). ``mode_argument``
  (``config.mode_argument``) names the argument of such a module's ``__call__`` that switches
  it between training and inference (``training_mode``); '' finds it by its usual names.
  """
  given = training_mode.parse_mode_argument(mode_argument)
  factory = get_factory(name)
  network = factory(**kwargs)
  where, _, function = name.rpartition(':')
  if where.endswith('.py'):  # a path that still works from another working directory
    name = f'{os.path.abspath(where)}:{function}'
  nnx = sys.modules.get('flax.nnx')  # imported by whoever built an NNX module
  if nnx is not None and isinstance(network, nnx.Module):
    from autoslim_jax import nnx_modules  # pylint: disable=g-import-not-at-top
    # Then traced as a linen module.
    network = nnx_modules.to_linen(network, factory, kwargs, given)
  elif isinstance(network, nn.Module) and given is not None:
    network = training_mode.with_mode_argument(network, given)
  if isinstance(network, nn.Module):
    network = _plain_network(name, factory, network, kwargs)
  elif given is not None:
    raise ValueError(f'model {name!r}: mode_argument {mode_argument!r} is for a plain flax '
                     f'module; this model is an autoslim_jax Network, which switches its own '
                     f"mode (give mode_argument '')")
  if not isinstance(network, Network):
    raise ValueError(f'model {name!r}: the factory returned {type(network).__name__}, not an '
                     'autoslim_jax.models.Network, a flax.linen module or a flax.nnx module')
  # What rebuilds it, e.g. in the latency worker or load_slim.
  network.name = name
  network.mode_argument = mode_argument.strip()
  return network


def _plain_network(name: str, factory: Callable, module: nn.Module, kwargs) -> Network:
  # Imported here: plain_network imports this package's base module.
  from autoslim_jax import plain_network  # pylint: disable=g-import-not-at-top
  from autoslim_jax import tracing  # pylint: disable=g-import-not-at-top
  parameters = inspect.signature(factory).parameters
  missing = [k for k in PLAIN_INPUT_ARGUMENTS if k not in parameters]
  if missing:
    raise ValueError(f'model {name!r} returns a plain flax module ({type(module).__name__}); to '
                     f'trace it, its function must take the arguments {list(PLAIN_INPUT_ARGUMENTS)}'
                     f' (images of image_size x image_size x in_channels), but it lacks {missing}'
                     f' (it takes {sorted(parameters)})')
  size, channels = (kwargs[k] if k in kwargs else parameters[k].default
                    for k in PLAIN_INPUT_ARGUMENTS)
  try:
    return plain_network.PlainNetwork(name, module, (size, size, channels))
  except tracing.TracingError as e:
    raise tracing.TracingError(f'model {name!r}: {e}') from None


__all__ = ['LayerRecord', 'MODELS', 'Network', 'PLAIN_INPUT_ARGUMENTS', 'create_network',
           'factory_parameters', 'get_factory', 'register', 'trace_layers']
