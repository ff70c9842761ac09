"""How a plain Flax module is switched between training and inference, and the check that it is.

Why: the package trains the supernet with BatchNorm on batch statistics and evaluates, calibrates
and exports with running statistics, so it must pass a plain module its mode. People name that
argument ``train``, ``training``, ``is_training`` or ``deterministic`` (True in inference), or
any name the config gives (``config.mode_argument``: ``GivenModeArgument``); a module called
without it keeps whatever its BatchNorms were built with, and with the usual
``use_running_average=True`` the supernet would train on its initial running averages and never
update them, silently. ``check_modes`` runs the module once per mode (shapes only, nothing
computed) and refuses, before anything trains, each layer that would not follow the mode or
that the training steps cannot run, naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import keyword
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModeArgument:
  """A keyword argument of ``__call__`` that sets the mode; ``inverted``: True in inference."""
  name: str
  inverted: bool

  def value(self, train: bool) -> bool:
    return not train if self.inverted else train


# The names the mode argument goes by in Flax code, and whether True means inference.
MODE_ARGUMENTS = (ModeArgument('train', False), ModeArgument('training', False),
                  ModeArgument('is_training', False), ModeArgument('deterministic', True),
                  ModeArgument('use_running_average', True))
MODE_NAMES = ', '.join(m.name for m in MODE_ARGUMENTS)


def parse_mode_argument(spec: str) -> ModeArgument | None:
  """``config.mode_argument``: '' (found by its name), 'NAME' (True in training mode) or
  'not NAME' (True in inference mode, as ``deterministic``)."""
  words = spec.split()
  if not words:
    return None
  inverted = words[0] == 'not'
  if len(words) != 1 + inverted or not words[-1].isidentifier() or keyword.iskeyword(words[-1]):
    raise ValueError(f'mode_argument {spec!r}: give the name of the argument of __call__ that '
                     "is True in training mode ('is_train'), 'not NAME' for one that is True in "
                     "inference mode ('not eval_mode'), or '' to find it by its name (one of "
                     f'{MODE_NAMES})')
  return ModeArgument(words[-1], inverted)


def call_mode_arguments(function, given: ModeArgument | None = None
                        ) -> tuple[ModeArgument, ...]:
  """The mode arguments ``function`` (a ``__call__``) takes: ``given``, which it must take, or
  those of ``MODE_ARGUMENTS`` it takes (usually one, or none)."""
  try:
    parameters = inspect.signature(function).parameters
  except (TypeError, ValueError):
    parameters = {}
  if given is None:
    return tuple(m for m in MODE_ARGUMENTS if m.name in parameters)
  if given.name not in parameters and not any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    names = [n for n in parameters if n != 'self']
    raise ValueError(f'mode_argument {given.name!r}: {function.__qualname__} takes no argument '
                     f'{given.name!r} (it takes {names})')
  return (given,)


class GivenModeArgument(nn.Module):
  """A plain module whose mode argument the config names (``config.mode_argument``), called with
  its arguments unchanged. It shares the module's scope: variables, layer paths and unit names
  are the module's own. ``with_mode_argument`` names the class after the module's."""
  module: nn.Module
  mode_argument: ModeArgument

  def setup(self):
    nn.share_scope(self, self.module)

  def __call__(self, *args, **kwargs):
    return self.module(*args, **kwargs)


def with_mode_argument(module: nn.Module, given: ModeArgument) -> GivenModeArgument:
  """``module`` switched by the argument ``given`` (refused when its ``__call__`` lacks it)."""
  call_mode_arguments(type(module).__call__, given)
  name = type(module).__name__  # as errors and the network's description say it
  if name not in _GIVEN_CLASSES:
    _GIVEN_CLASSES[name] = type(name, (GivenModeArgument,), {'__module__': __name__})
  return _GIVEN_CLASSES[name](module, given)


_GIVEN_CLASSES: dict[str, type] = {}


def mode_arguments(module: nn.Module) -> tuple[ModeArgument, ...]:
  """The mode arguments the module's ``__call__`` takes (usually one, or none)."""
  if isinstance(module, GivenModeArgument):
    return (module.mode_argument,)
  return call_mode_arguments(type(module).__call__)


def _nnx_source(module: nn.Module):
  """An NNX module's source (``nnx_modules._Source``), or None for a linen module."""
  from autoslim_jax import nnx_modules  # pylint: disable=g-import-not-at-top  # it imports this
  return module.source if isinstance(module, nnx_modules.NNXModule) else None


def given_mode_argument(module: nn.Module) -> ModeArgument | None:
  """The mode argument ``config.mode_argument`` gave the module (linen or NNX), or None."""
  if isinstance(module, GivenModeArgument):
    return module.mode_argument
  source = _nnx_source(module)
  return None if source is None else source.mode_argument


def mode_kwargs(module: nn.Module, train: bool) -> dict[str, bool]:
  """The keyword arguments that put ``module`` in training (``train``) or inference mode."""
  return {m.name: m.value(train) for m in mode_arguments(module)}


def _argument(args: Sequence[Any], kwargs: dict, position: int, name: str):
  """A call argument by keyword or position (after ``self``'s input), or None."""
  if name in kwargs:
    return kwargs[name]
  return args[position] if len(args) > position else None


def _layer(module: nn.Module) -> str:
  return '/'.join(str(p) for p in module.path) or type(module).__name__


def check_modes(module: nn.Module, input_shape: Sequence[int], batch: int = 2) -> None:
  """Refuses a module that the package cannot switch between training and inference mode, or
  whose training graph its steps cannot run (before anything is compiled or trained).

  Raises ``tracing.TracingError`` naming the layer and the fix for: a BatchNorm that does not
  normalise with batch statistics in training mode or with its running averages in inference
  mode; a BatchNorm with an ``axis_name`` (written for ``pmap``); active dropout; a module
  without BatchNorm; any other error of the module in training mode; and an inference graph
  that computes with the batch size (``tracing.refuse_batch_size_constants``).
  """
  from autoslim_jax import tracing  # pylint: disable=g-import-not-at-top  # tracing imports this
  name = type(module).__name__
  arguments = mode_arguments(module)

  def how(train: bool) -> str:
    source = _nnx_source(module)
    if source is not None:  # NNX: train() / eval(), and any argument of __call__
      called = ', '.join(f'{m.name}={m.value(train)}' for m in source.call_arguments)
      return (f'{name} after {"train()" if train else "eval()"}'
              + (f', called with {called}' if called else ''))
    if not arguments:
      return (f'{name}.__call__ takes no mode argument (one of {MODE_NAMES}), so the package '
              'cannot switch it')
    return f'{name} called with ' + ', '.join(f'{m.name}={m.value(train)}' for m in arguments)

  images = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, **mode_kwargs(module, False)), images)

  def apply(variables, x, train: bool):
    return module.apply(variables, x, mutable=True, **mode_kwargs(module, train))

  for train in (True, False):
    norms = []

    def interceptor(next_fun, args, kwargs, context, train=train, norms=norms):
      layer = context.module
      if context.method_name != '__call__':
        return next_fun(*args, **kwargs)
      if isinstance(layer, nn.BatchNorm):
        if layer.axis_name is not None and train:
          raise tracing.TracingError(
              f'{_layer(layer)}: nn.BatchNorm(axis_name={layer.axis_name!r}) reduces over a '
              f'pmap axis that the package does not bind; remove axis_name: the package '
              f'already normalises over the global batch of every device')
        call = _argument(args, kwargs, 1, 'use_running_average')
        running = layer.use_running_average if call is None else call
        norms.append(_layer(layer))
        if bool(running) == train:
          mode = 'training' if train else 'inference'
          uses = 'its running averages' if train else 'batch statistics'
          another = ('' if given_mode_argument(module) is not None else
                     "; if __call__ takes the mode under another name, give it as "
                     "config.mode_argument ('NAME', or 'not NAME' for one True in inference)")
          raise tracing.TracingError(
              f'{_layer(layer)}: this BatchNorm normalises with {uses} in {mode} mode '
              f'({how(train)}); its use_running_average '
              f'must follow the mode, e.g. nn.BatchNorm(use_running_average=not train)'
              + another)
      if isinstance(layer, nn.Dropout) and train and layer.rate > 0:
        call = _argument(args, kwargs, 1, 'deterministic')
        if not (layer.deterministic if call is None else call):
          raise tracing.TracingError(
              f'{_layer(layer)}: dropout (rate {layer.rate}) in training mode: random layers '
              f'are not supported yet (the training steps pass no random keys); remove it, or '
              f'make it deterministic')
      return next_fun(*args, **kwargs)

    try:
      with nn.intercept_methods(interceptor):
        graph = jax.make_jaxpr(functools.partial(apply, train=train))(variables, images).jaxpr
    except tracing.TracingError:
      raise
    except flax.errors.InvalidRngError as e:
      raise tracing.TracingError(
          f'{name} asks for a random key in training mode (dropout, stochastic depth: '
          f'{str(e).splitlines()[0]}); random layers are not supported yet: remove them') from None
    except Exception as e:  # pylint: disable=broad-except  # any failure, said before training
      raise tracing.TracingError(
          f'{name} fails in training mode ({how(True)}): '
          f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from None
    if not norms:
      raise tracing.TracingError(
          f'{name} has no BatchNorm: the package trains, searches and calibrates through '
          f'BatchNorm statistics (a network without them is not supported yet)')
  # The loop's last graph is the inference one, checked now that its BatchNorms follow the mode.
  more = jax.ShapeDtypeStruct((batch + 1,) + tuple(input_shape), jnp.float32)
  tracing.refuse_batch_size_constants(
      name, (batch, graph),
      (batch + 1, jax.make_jaxpr(functools.partial(apply, train=False))(variables, more).jaxpr))
