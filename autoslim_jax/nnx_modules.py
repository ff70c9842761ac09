"""A Flax NNX module as a plain ``flax.linen`` module, so that it is traced and searched as one.

Why: Flax's documentation now leads with NNX (``nnx.Conv``, ``nnx.BatchNorm``, ``nnx.Linear``,
``model.train()`` / ``model.eval()``), so a user's factory may return an ``nnx.Module``. Its
channels are coupled exactly as a linen module's: the tracer (``tracing.py``) reads them off the
jaxpr, which does not care which API built it. What differs is only how state and mode reach
the computation: NNX keeps its variables inside the (mutable) module and sets the mode with
``train()`` / ``eval()``, where the package's steps pass variables (``params``, ``batch_stats``)
into a pure ``apply`` and the mode as an argument. ``flax.nnx.bridge.ToLinen`` bridges the
variables but wants the module's class and constructor arguments (it rebuilds the module on
every call), not the instance a factory returns, and leaves the mode to the caller.

How: ``NNXModule`` is a linen module holding the NNX module's ``GraphDef`` and its state.
``__call__(x, train=False)`` builds a fresh copy of the NNX module (``nnx.merge``; its variables
are created in the caller's trace, as NNX requires of variables it updates), reads every
``nnx.Param`` from linen's ``params`` and every ``nnx.BatchStat`` from ``batch_stats`` under the
NNX attribute path (``conv1/kernel``, ``blocks/0/bn/mean``), calls ``train()`` or ``eval()``,
runs the module (passing the mode too if its ``__call__`` takes ``train``, ``training``,
``deterministic``, ..., as ``training_mode`` finds it in a linen module) and writes the updated
batch statistics back (when ``batch_stats`` is mutable).
The NNX module's own code computes everything; its arrays are linen's, so the package's masks,
slices and re-evaluation of the traced graph apply unchanged (``models.create_network`` hands
the wrapper to ``plain_network.PlainNetwork``).

While it runs, every NNX submodule's call is wrapped (the copy's classes are swapped for
subclasses for the call, then restored; nothing else changes): it runs under ``jax.named_scope`` of its attribute path, so
the tracer's refusals name the layer (``block/ln: reduce_sum ...``), and an ``nnx.BatchNorm``
or ``nnx.Dropout`` call is made through a stand-in ``nn.BatchNorm`` / ``nn.Dropout`` bound at
its path, which does nothing but call the NNX layer: ``training_mode.check_modes`` then checks
NNX layers as it checks linen ones (BatchNorm follows ``train()`` / ``eval()``, no
``axis_name``, no active dropout, a BatchNorm exists).

Initial weights: NNX layers draw their weights when constructed and do not keep their
initialisers, so a fresh set for another key needs the module built again. A factory that takes
an ``rngs`` argument is called again with ``rngs=nnx.Rngs(key)`` by ``init`` (the linen key);
otherwise every key gives the weights the factory's module was built with.

Variables other than ``nnx.Param``, ``nnx.BatchStat`` and random-number state (``nnx.Rngs``,
read by dropout, which is refused in training mode) are refused, naming their path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from typing import Any, Callable, Mapping

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp

from autoslim_jax import tracing
from autoslim_jax import training_mode

Path = tuple[Any, ...]

try:  # Errors name the user's line, not this file's call of it (jax skips flax's files too).
  from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
  source_info_util.register_exclusion(__file__)
except (ImportError, AttributeError):
  pass

# NNX variable types -> the linen collection they live in.
COLLECTIONS = ((nnx.BatchStat, 'batch_stats'), (nnx.Param, 'params'))


@dataclasses.dataclass(frozen=True, eq=False)
class _Source:
  """The NNX module, split: compared and hashed by identity (a linen field)."""
  graphdef: Any
  state: Any
  class_name: str
  rebuild: Callable[[jax.Array], Any] | None  # key -> a freshly initialised module
  mode_argument: training_mode.ModeArgument | None  # config.mode_argument, or None: by name
  call_arguments: tuple[training_mode.ModeArgument, ...]  # what __call__ is given the mode by


class _BatchNormCall(nn.BatchNorm):
  """Stands for an ``nnx.BatchNorm`` call, so that linen's interceptors (``check_modes``) see a
  BatchNorm at the NNX layer's path with the mode it runs in; it computes nothing itself."""

  # pylint: disable-next=arguments-differ
  def __call__(self, x, use_running_average=None, *, nnx_call=None):
    del x, use_running_average
    return nnx_call()


class _DropoutCall(nn.Dropout):
  """Stands for an ``nnx.Dropout`` call, as ``_BatchNormCall`` for BatchNorm."""

  # pylint: disable-next=arguments-differ
  def __call__(self, inputs, deterministic=None, rng=None, *, nnx_call=None):
    del inputs, deterministic, rng
    return nnx_call()


_WRAPPED: dict[type, type] = {}


def _wrapped_class(cls: type) -> type:
  """A subclass of the NNX module class ``cls`` whose ``__call__`` goes through ``_Run``."""
  if cls not in _WRAPPED:
    def __call__(self, *args, **kwargs):
      return _CURRENT.run.call(self, cls, args, kwargs)
    _WRAPPED[cls] = type(cls)(cls.__name__, (cls,), {
        '__call__': __call__, '__module__': cls.__module__, '__qualname__': cls.__qualname__})
  return _WRAPPED[cls]


def _argument(args, kwargs, position: int, name: str):
  if name in kwargs:
    return kwargs[name]
  return args[position] if len(args) > position else None


_CURRENT = threading.local()  # .run: the _Run of the wrapped module being called


class _Run:
  """One call of the wrapped NNX module: its submodules' paths and the linen scope."""

  def __init__(self, linen_module: nn.Module, paths: Mapping[int, Path]):
    self.linen_module = linen_module
    self.paths = paths
    self.stack: list[Path] = [()]

  def scope(self, path: Path):
    scope = self.linen_module.scope
    for key in path:
      scope = scope.push(str(key), reuse=True)
    return scope

  def call(self, node, cls, args, kwargs):
    path = self.paths.get(id(node), ())
    parent = self.stack[-1]
    relative = path[len(parent):] if path[:len(parent)] == parent else path
    call = lambda: cls.__call__(node, *args, **kwargs)
    self.stack.append(path)
    try:
      with jax.named_scope('/'.join(map(str, relative))) if relative else (
          contextlib.nullcontext()):
        if isinstance(node, nnx.BatchNorm):
          running = _argument(args, kwargs, 1, 'use_running_average')
          running = node.use_running_average if running is None else running
          stand_in = _BatchNormCall(use_running_average=node.use_running_average,
                                    axis_name=node.axis_name, parent=self.scope(path))
          return stand_in(args[0] if args else None, use_running_average=running,
                          nnx_call=call)
        if isinstance(node, nnx.Dropout):
          deterministic = kwargs.get('deterministic')
          deterministic = node.deterministic if deterministic is None else deterministic
          stand_in = _DropoutCall(node.rate, deterministic=node.deterministic,
                                  parent=self.scope(path))
          return stand_in(args[0] if args else None, deterministic=deterministic, nnx_call=call)
        return call()
    finally:
      self.stack.pop()


def _path_name(path: Path) -> str:
  return '/'.join(map(str, path))


def _collection(variable, path: Path) -> str | None:
  for kind, collection in COLLECTIONS:
    if isinstance(variable, kind):
      return collection
  if isinstance(variable, nnx.RngState):
    return None  # random-number state: stays as the factory made it
  raise tracing.TracingError(
      f'{_path_name(path)}: an {type(variable).__module__}.{type(variable).__name__} variable; '
      'an NNX module is searched with nnx.Param and nnx.BatchStat variables only (and the '
      'random-number state of layers that are inactive in training mode)')


def _flat_values(module) -> dict[Path, Any]:
  return {tuple(path): variable.get_value() for path, variable in nnx.iter_graph(module)
          if isinstance(variable, nnx.Variable)}


class NNXModule(nn.Module):
  """A Flax NNX module as a linen module (see the module docstring): ``apply(variables, x,
  train=...)`` with collections ``params`` and ``batch_stats`` named by the NNX attribute
  paths; ``train`` calls the module's ``train()``, else its ``eval()``."""
  source: _Source

  @nn.compact
  def __call__(self, x, train: bool = False):
    source = self.source
    initial = None
    if self.is_initializing() and source.rebuild is not None:
      initial = _flat_values(source.rebuild(self.make_rng('params')))
    run = _Run(self, {})
    values = []
    for path, variable in nnx.to_flat_state(source.state):
      path = tuple(path)
      collection = _collection(variable, path)
      value = variable.get_value()
      if collection is not None:
        if initial is not None:
          if path not in initial or jnp.shape(initial[path]) != jnp.shape(value):
            raise ValueError(f'{source.class_name}: the factory called with rngs builds another '
                             f'module (variable {_path_name(path)} differs)')
          value = initial[path]
        scope = run.scope(path[:-1])
        name = str(path[-1])
        if collection == 'params':
          value = scope.param(name, lambda rng, value=value: value)
        else:
          value = scope.variable(collection, name, lambda value=value: value).value
      values.append((path, variable.replace(value)))
    # A fresh copy of the module holding linen's arrays (its variables created in this trace).
    model = nnx.merge(source.graphdef, nnx.from_flat_state(values))
    statistics = []
    for path, node in nnx.iter_graph(model):
      path = tuple(path)
      if isinstance(node, nnx.Module):
        run.paths[id(node)] = path
      elif isinstance(node, nnx.BatchStat):
        scope = run.scope(path[:-1])
        statistics.append((node, scope, str(path[-1])))
    if train:
      model.train()
    else:
      model.eval()
    # A module whose __call__ takes a mode argument (train=..., deterministic=..., or the one
    # config.mode_argument names) gets it too.
    mode = {m.name: m.value(train) for m in source.call_arguments}
    modules = [node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)]
    classes = [type(node) for node in modules]
    previous = getattr(_CURRENT, 'run', None)
    _CURRENT.run = run
    try:
      for node, cls in zip(modules, classes):
        node.__class__ = _wrapped_class(cls)
      out = model(x, **mode)
    finally:
      for node, cls in zip(modules, classes):
        node.__class__ = cls
      _CURRENT.run = previous
    if self.is_mutable_collection('batch_stats'):
      for node, scope, name in statistics:
        scope.put_variable('batch_stats', name, node.get_value())
    return out


def to_linen(module, factory: Callable | None = None,
             kwargs: Mapping[str, Any] | None = None,
             mode_argument: training_mode.ModeArgument | None = None) -> NNXModule:
  """``module`` (an ``nnx.Module`` at its max widths) as a linen ``NNXModule``. When ``factory``
  (which built it from ``kwargs``) takes ``rngs``, ``init`` builds the module again with
  ``rngs=nnx.Rngs(key)``: each key gives its own initial weights. ``mode_argument``: an
  argument of its ``__call__`` to pass the mode by, besides ``train()`` / ``eval()``."""
  call_arguments = training_mode.call_mode_arguments(type(module).__call__, mode_argument)
  graphdef, state = nnx.split(module)  # other variable types are refused when it is traced
  rebuild = None
  if factory is not None and 'rngs' in inspect.signature(factory).parameters:
    rebuild = lambda key: factory(**dict(kwargs or {}, rngs=nnx.Rngs(key)))
  name = type(module).__name__
  if name not in _LINEN_CLASSES:  # named as the NNX class, as errors and name stacks say it
    _LINEN_CLASSES[name] = type(name, (NNXModule,), {'__module__': __name__})
  return _LINEN_CLASSES[name](_Source(graphdef, state, name, rebuild, mode_argument,
                                         call_arguments))


_LINEN_CLASSES: dict[str, type] = {}


__all__ = ['NNXModule', 'to_linen']
