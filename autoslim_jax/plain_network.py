"""A traced plain Flax module as the package's masked supernet and as its slim networks.

Why: ``tracing.trace_network`` finds the channel units of a plain ``flax.linen`` module; to
train, search and export it like the zoo, the package needs (1) one compiled graph that computes
every config's sub-network and (2) each config's network computed on physically smaller arrays.

Masked supernet (``MaskedPlainNetwork``): every variable slice a unit controls is multiplied by
a mask keeping its first ``config[unit]`` entries (a kernel axis reading a concatenation keeps
the first entries of each segment). The tracer proves that channels meet other channels only
through parameter kernels (conv, dense, depthwise) and otherwise only channel by channel, so
once every kernel row of an inactive input channel is zero, no active channel depends on an
inactive one: the active channels are the slim network's, whatever the inactive ones hold. This
needs no knowledge of layer types (a kernel created with ``self.param`` is masked as well as
``nn.Conv``'s), and the masks are arrays, so one jitted graph serves every config (vmapped
configs too). BatchNorm statistics are per channel, so masked channels do not change the active
ones'; the running statistics of inactive channels are kept as they were (a masked channel's
statistics are meaningless).

Slim network (``SlimPlainNetwork``): the plain module's Python code cannot simply be run at
smaller widths: it hard-codes widths (``nn.Conv(64)``, which Flax checks against the params) and
may branch on shapes (``x + y if x.shape[-1] == self.out``, which would silently drop a residual
at another width). So the module's jaxpr, traced at max width, is evaluated again equation by
equation on the sliced arrays: every array axis carries the tracer's label, a unit's axis
shrinks to the config's count, and the few primitives that carry shapes in their parameters
(broadcasts, reshapes, iotas, depthwise group counts, whole-axis slices) are re-parameterised.
Every result's shape is checked against the expected slim shape, so an unsupported primitive
fails loudly, naming itself, instead of computing something else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.extend.core as jcore
from jax._src import core as jax_core  # pylint: disable=g-direct-jax-src-import
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from autoslim_jax import channels as channels_lib
from autoslim_jax import tracing
from autoslim_jax import tracing_labels
from autoslim_jax import tracing_rules
from autoslim_jax import training_mode
from autoslim_jax.models.base import LayerRecord, Network

Path = tuple[str, ...]


def _call(module: nn.Module, variables, x, train: bool, mutable, rngs=None):
  return module.apply(variables, x, mutable=mutable, rngs=rngs,
                      **training_mode.mode_kwargs(module, train))


def _logits(traced: tracing.TracedNetwork, out):
  """The logits in float32 at least, as the zoo's: the loss and the distillation teacher of a
  bfloat16 network are computed in float32 (a float64 network keeps float64)."""
  logits = out if traced.logits_index is None else out[traced.logits_index]
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _flat(variables) -> dict[Path, Any]:
  return traverse_util.flatten_dict(flax.core.unfreeze(variables))


# ----------------------------------------------------------------------------------------------
# Masks and slices of variables, from the units' (variable, axis, start, stop) lists.


def _axis_controls(traced: tracing.TracedNetwork) -> dict[Path, dict[int, list]]:
  """variable path -> axis -> [(unit, start, stop)]."""
  controls: dict[Path, dict[int, list]] = {}
  for unit in traced.units:
    for p in unit.params:
      controls.setdefault(p.path, {}).setdefault(p.axis, []).append((unit.name, p.start, p.stop))
  return controls


def _axis_mask(size: int, segments, config) -> jax.Array:
  """1 where the entry of an axis of ``size`` is active under ``config``, else 0."""
  index = jnp.arange(size)
  keep = jnp.ones(size, bool)
  for unit, start, stop in segments:
    inside = (index >= start) & (index < stop)
    keep &= ~inside | (index - start < config[unit])
  return keep


def _variable_keep(value, axes: Mapping[int, list], config) -> jax.Array:
  """Boolean mask of ``value``'s shape: its active entries."""
  keep = jnp.ones(np.shape(value), bool)
  for axis, segments in axes.items():
    shape = [1] * np.ndim(value)
    shape[axis] = np.shape(value)[axis]
    keep = keep & _axis_mask(shape[axis], segments, config).reshape(shape)
  return keep


def _kept_indices(size: int, segments, config: Mapping[str, int]) -> np.ndarray:
  """The entries of an axis the slim network keeps: each segment's first ``config[unit]``."""
  drop = np.zeros(size, bool)
  for unit, start, stop in segments:
    drop[start + int(config[unit]):stop] = True
  return np.flatnonzero(~drop)


def validate_config(traced: tracing.TracedNetwork, config: Mapping[str, Any]) -> dict:
  """Every unit named, with a count in 1..max (static configs only)."""
  missing = [u.name for u in traced.units if u.name not in config]
  unknown = [k for k in config if k not in traced.max_widths]
  if missing or unknown:
    raise ValueError(f'config: missing units {missing}, unknown units {unknown}')
  out = {}
  for unit in traced.units:
    value = int(config[unit.name])
    if not 1 <= value <= unit.width:
      raise ValueError(f'config: unit {unit.name!r} has {value} channels, allowed 1..{unit.width}')
    out[unit.name] = value
  return out


def slim_variables(traced: tracing.TracedNetwork, variables, config: Mapping[str, int]) -> dict:
  """Max-width ``variables`` cut to ``config``: every unit's slices keep their first entries."""
  config = validate_config(traced, config)
  controls = _axis_controls(traced)
  sliced = {}
  for path, value in _flat(variables).items():
    # Concrete arrays are cut on the host (export: no gather compiled per shape); a traced one
    # (``SlimPlainNetwork.init`` under jit) is indexed as it is: the kept indices are static.
    value = value if isinstance(value, jax.core.Tracer) else np.asarray(value)
    for axis, segments in controls.get(path, {}).items():
      keep = _kept_indices(value.shape[axis], segments, config)
      value = value[(slice(None),) * axis + (keep,)]
    sliced[path] = value
  return traverse_util.unflatten_dict(sliced)


# ----------------------------------------------------------------------------------------------
# The masked supernet.


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedPlainNetwork:
  """The supernet of a traced plain module, with the zoo supernet's ``init`` / ``apply``:
  ``apply(variables, images, config, train=..., mutable=...)`` returns the logits of
  ``config``'s sub-network (``config=None``: the max network)."""
  module: nn.Module
  traced: tracing.TracedNetwork

  def init(self, rngs, images, config=None, train: bool = False):
    del config  # the variables are the max network's
    kwargs = training_mode.mode_kwargs(self.module, train)
    return self.module.init(rngs, images, **kwargs)

  def apply(self, variables, images, config=None, train: bool = False, mutable=False,
            rngs=None):
    if config is None:
      result = _call(self.module, variables, images, train, mutable, rngs)
      return (_logits(self.traced, result[0]), result[1]) if mutable else _logits(
          self.traced, result)
    controls = _axis_controls(self.traced)
    flat = _flat(variables)
    keeps = {path: _variable_keep(flat[path], axes, config) for path, axes in controls.items()}
    masked = {path: value * keeps[path].astype(jnp.asarray(value).dtype) if path in keeps
              else value for path, value in flat.items()}
    result = _call(self.module, traverse_util.unflatten_dict(masked), images, train, mutable,
                   rngs)
    if not mutable:
      return _logits(self.traced, result)
    out, updates = result
    # An inactive channel's statistics stay as they were (the update saw masked zeros).
    merged = {path: jnp.where(keeps[path], value, flat[path]) if path in keeps else value
              for path, value in _flat(updates).items()}
    return _logits(self.traced, out), traverse_util.unflatten_dict(merged)


# ----------------------------------------------------------------------------------------------
# The slim network: the max network's jaxpr evaluated again on sliced arrays.


class _RecordingTracer(tracing._Tracer):  # pylint: disable=protected-access
  """The tracer, keeping the labels of every variable of every (sub-)jaxpr it walks, in the
  order it walks them (the evaluation below walks them in the same order)."""

  def __init__(self, variable_paths, param_paths):
    super().__init__(variable_paths, param_paths)
    self.envs: list[dict] = []
    self._stack: list[dict] = []

  def run(self, jaxpr, in_labels, in_origins, prefix):
    env = dict(zip(jaxpr.invars, in_labels))
    self.envs.append(env)
    self._stack.append(env)
    try:
      return super().run(jaxpr, in_labels, in_origins, prefix)
    finally:
      self._stack.pop()

  def equation(self, eqn, ins, ins_origin, where, prefix):
    env = self._stack[-1]
    for v, labels in zip(eqn.invars, ins):
      if not isinstance(v, jcore.Literal):
        env.setdefault(v, labels)
    outs, origins = super().equation(eqn, ins, ins_origin, where, prefix)
    for v, labels in zip(eqn.outvars, outs):
      env[v] = labels
    return outs, origins


@dataclasses.dataclass
class _Program:
  """One traced graph (one image shape and mode) with the labels of all its arrays."""
  jaxpr: Any
  consts: Sequence[Any]
  out_tree: Any
  variable_paths: list
  envs: list
  labels: Any  # tracing_labels.Labels
  unit_of: dict  # label class root -> unit name
  batch_root: int | None  # the label class of the images' batch axis (None: a batch of 1)


def _trace_program(module, traced, images: jax.ShapeDtypeStruct, train: bool, mutable,
                   dtypes: dict) -> _Program:
  """``dtypes``: the dtype of each variable (by path) the program is called with, so that
  variables cast after init (float64 BatchNorm statistics, say) run as the module would run them.
  """
  kwargs = training_mode.mode_kwargs(module, train)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), images)
  variables = jax.tree_util.tree_map_with_path(
      lambda keypath, leaf: jax.ShapeDtypeStruct(
          leaf.shape, dtypes.get(tuple(tracing._key_name(k) for k in keypath), leaf.dtype)),  # pylint: disable=protected-access
      variables)
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  paths = [tuple(tracing._key_name(k) for k in keypath) for keypath, _ in leaves]  # pylint: disable=protected-access

  def apply(variables, x):
    return module.apply(variables, x, mutable=mutable, **kwargs)

  closed, out_shapes = jax.make_jaxpr(apply, return_shape=True)(variables, images)
  tracer = _RecordingTracer(paths, {p for p in paths if p[0] == 'params'})
  var_labels = [tracer.fresh(np.shape(leaf)) for _, leaf in leaves]
  image_labels = [tracer.labels.new(n) for n in images.shape]
  tracer.run(closed.jaxpr, var_labels + [image_labels], list(paths) + [None], '')
  # Name the label classes after the units through the variable slices each unit controls.
  unit_of = {}
  index = {path: i for i, path in enumerate(paths)}
  for unit in traced.units:
    for p in unit.params:
      offset = 0
      for root, size in tracer.labels.flat_segments(var_labels[index[p.path]][p.axis]):
        if offset == p.start and root is not None:
          unit_of[root] = unit.name
        offset += size
  return _Program(closed.jaxpr, closed.consts, jax.tree_util.tree_structure(out_shapes), paths,
                  tracer.envs, tracer.labels, unit_of,
                  None if image_labels[0] is None else tracer.labels.find(image_labels[0]))


class _Evaluation:
  """Evaluates a program's jaxprs on slim arrays for one config and batch size (an inference
  program traced at a fixed batch serves a symbolic one: the batch axis is a label like the
  channel axes, so the parameters that carry it are set as theirs are)."""

  def __init__(self, program: _Program, config: Mapping[str, int], batch):
    self.program = program
    self.config = config
    self.batch = batch
    self.envs = iter(program.envs)

  def size(self, label, size: int) -> int:
    if label is None:
      return size
    pieces = self.program.labels.flat_segments(label)
    return sum(self.batch if root is not None and root == self.program.batch_root else
               self.config[self.program.unit_of[root]] if root in self.program.unit_of else n
               for root, n in pieces)

  def offset(self, label, max_offset: int) -> int:
    """Where entry ``max_offset`` of an axis (the start of one of its segments, or any entry of
    an axis no unit narrows) is at the slim widths."""
    slim, offset = 0, 0
    for root, n in ([] if label is None else self.program.labels.flat_segments(label)):
      if offset + n > max_offset:
        break
      slim += self.size(root, n)
      offset += n
    return slim + max_offset - offset

  def shape(self, env, v) -> tuple[int, ...] | None:
    labels = env.get(v)
    if labels is None:
      return None
    return tuple(self.size(l, n) for l, n in zip(labels, v.aval.shape))

  def cut(self, value, labels):
    """A max-width array (a constant of the graph) cut to the slim widths of its axes."""
    value = np.asarray(value)
    for axis, label in enumerate(labels or ()):
      if label is None:
        continue
      keep, offset = [], 0
      for root, n in self.program.labels.flat_segments(label):
        active = self.config[self.program.unit_of[root]] if root in self.program.unit_of else n
        keep.append(np.arange(offset, offset + active))
        offset += n
      value = np.take(value, np.concatenate(keep), axis=axis)
    return value

  def run(self, jaxpr, consts, args):
    env = next(self.envs)
    values = {}

    def read(v):
      return v.val if isinstance(v, jcore.Literal) else values[v]

    for v, c in zip(jaxpr.constvars, consts):
      values[v] = self.cut(c, env.get(v))
    for v, a in zip(jaxpr.invars, args):
      want = self.shape(env, v)
      if want is not None and tuple(np.shape(a)) != want:
        raise ValueError(f'slim network: an input has shape {np.shape(a)}, expected {want}')
      values[v] = a
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      wants = [self.shape(env, v) for v in eqn.outvars]
      sub = tracing_labels.sub_jaxpr(eqn) if eqn.primitive.name in tracing_rules.CALLS else None
      if sub is not None:  # inlined (a custom derivative rule is not kept)
        sub_jaxpr, sub_consts = sub
        outs = self.run(sub_jaxpr, sub_consts, ins[len(ins) - len(sub_jaxpr.invars):])
      else:
        starts = None
        if eqn.primitive.name == 'slice':  # each axis's start at the slim widths
          operand = eqn.invars[0]
          labels = None if isinstance(operand, jcore.Literal) else env.get(operand)
          starts = tuple(self.offset(label, start) for label, start in zip(
              labels or [None] * np.ndim(ins[0]), eqn.params['start_indices']))
        outs = eqn.primitive.bind(*_same_varying_axes(ins),
                                  **_slim_params(eqn, ins, wants, starts))
        if not eqn.primitive.multiple_results:
          outs = [outs]
      for v, out, want in zip(eqn.outvars, outs, wants):
        if want is not None and tuple(np.shape(out)) != want:
          raise tracing.TracingError(
              f'{tracing_labels.describe(eqn, "")}: gives shape {np.shape(out)} at the slim widths, '
              f'expected {want}; this primitive cannot be slimmed by re-evaluation')
        if not isinstance(v, jcore.DropVar):
          values[v] = out
    return [read(v) for v in jaxpr.outvars]


def _same_varying_axes(values):
  """Inside ``shard_map`` (the train steps), operands must vary over the same mesh axes: the
  images vary over the data axis, the replicated variables do not. ``jax.lax``'s functions cast
  them before binding a primitive; the equations here are bound directly, so they are cast the
  same way (jax's own helper; where this jax lacks it, nothing is cast)."""
  cast = getattr(jax_core, 'auto_insert_reshard', None)
  return list(values) if cast is None or len(values) < 2 else list(cast(*values))


def _slim_params(eqn, ins, wants, starts=None) -> dict:
  """The equation's parameters at the slim shapes: the few primitives that carry shapes.
  ``starts``: a slice's start indices at the slim widths (``_Evaluation.offset``)."""
  params = dict(eqn.params)
  name = eqn.primitive.name
  want = wants[0] if wants else None
  max_shape = tuple(eqn.outvars[0].aval.shape) if eqn.outvars else None
  if name == 'split':  # the pieces' sizes (a concatenation's segments at the slim widths)
    if all(w is not None for w in wants):
      params['sizes'] = tuple(w[params['axis']] for w in wants)
    return params
  if name == 'gather':  # axes taken whole stay whole
    old = eqn.invars[0].aval.shape
    dims = params['dimension_numbers']
    params['slice_sizes'] = tuple(
        np.shape(ins[0])[i] if size == old[i] and i not in dims.start_index_map
        and i not in dims.collapsed_slice_dims and i not in dims.operand_batching_dims
        else size for i, size in enumerate(params['slice_sizes']))
    return params
  if want is None or want == max_shape:
    if name != 'conv_general_dilated' and name != 'slice':
      return params
  if name == 'reshape':
    params['new_sizes'] = want
    params['dimensions'] = None
  elif name == 'conv_general_dilated' and params['feature_group_count'] > 1:
    lhs_spec = params['dimension_numbers'].lhs_spec
    params['feature_group_count'] = int(np.shape(ins[0])[lhs_spec[1]])  # depthwise
  elif name == 'slice' and want is not None:  # ranges start and end at the slim offsets
    strides = params['strides'] or (1,) * len(want)
    params['limit_indices'] = tuple(
        begin + n if stride == 1 else limit
        for begin, n, limit, stride in zip(starts, want, params['limit_indices'], strides))
    params['start_indices'] = tuple(
        begin if stride == 1 else start
        for begin, start, stride in zip(starts, params['start_indices'], strides))
  elif 'shape' in params and tuple(params['shape']) == max_shape:  # broadcast_in_dim, iota, ...
    params['shape'] = want
  return params


@dataclasses.dataclass(frozen=True, eq=False)
class SlimPlainNetwork:
  """The physically slim network of ``config``: ``apply(variables, images, train=...,
  mutable=...)`` on ``slim_variables``' output, as the zoo's slim modules (``config`` must be
  None: the widths are the arrays')."""
  module: nn.Module
  traced: tracing.TracedNetwork
  config: Mapping[str, int]

  def __post_init__(self):
    object.__setattr__(self, 'config', validate_config(self.traced, self.config))
    object.__setattr__(self, '_programs', {})

  def init(self, rngs, images, config=None, train: bool = False):
    """Slim variables: the max network's fresh ones, sliced (the plain module can only create
    max-width variables; ``train.fit`` and the latency worker initialise slim networks), each
    kernel drawn anew at its slim shape (``with_slim_kernels``)."""
    del config  # the widths are this network's
    kwargs = training_mode.mode_kwargs(self.module, train)
    key = rngs['params'] if isinstance(rngs, Mapping) else rngs
    sliced = slim_variables(self.traced, self.module.init(rngs, images, **kwargs), self.config)
    return with_slim_kernels(self.module, images.shape[1:], sliced,
                             jax.random.fold_in(key, 1))

  def batch_statistics(self, variables, images, statistics):
    """``statistics`` (``evaluate.batch_statistics``) of this slim network, taken from the
    masked network at this config: BatchNorm inputs cannot be intercepted in a re-evaluated
    jaxpr, and the masked network's active channels are the slim network's. The slim variables
    are placed in zero max-width ones (inactive entries do not reach active channels)."""
    kwargs = training_mode.mode_kwargs(self.module, False)
    shapes = jax.eval_shape(lambda x: self.module.init(jax.random.key(0), x, **kwargs), images)
    controls = _axis_controls(self.traced)
    widened = {}
    for path, value in _flat(variables).items():
      axes = controls.get(path, {})
      full = _flat(shapes)[path]
      index = tuple(
          _kept_indices(n, axes[axis], self.config) if axis in axes else np.arange(n)
          for axis, n in enumerate(full.shape))
      widened[path] = jnp.zeros(full.shape, full.dtype).at[np.ix_(*index)].set(value)
    stats = statistics(MaskedPlainNetwork(self.module, self.traced),
                       traverse_util.unflatten_dict(widened), images, self.config)
    return slim_variables(self.traced, {'batch_stats': stats}, self.config)['batch_stats']

  def program(self, images, train: bool, mutable, dtypes: dict) -> _Program:
    """The module's program for images of this shape. An exported program's symbolic batch
    (inference) is traced at a fixed one and evaluated at the symbolic one: traced with it, jnp
    writes some ops otherwise (``x[..., :c]`` as a gather with a computed start). Training mode
    is traced at its own batch: BatchNorm divides by the batch's size, a constant there."""
    shape = tuple(images.shape)
    if not train and not isinstance(shape[0], (int, np.integer)):
      shape = (tracing.TRACE_BATCH,) + shape[1:]
    key = (shape, str(images.dtype), train, repr(mutable),
           tuple(sorted((path, str(dtype)) for path, dtype in dtypes.items())))
    if key not in self._programs:
      self._programs[key] = _trace_program(
          self.module, self.traced, jax.ShapeDtypeStruct(shape, images.dtype), train,
          mutable, dtypes)
    return self._programs[key]

  def apply(self, variables, images, config=None, train: bool = False, mutable=False,
            rngs=None):
    if config is not None:
      raise ValueError('a slim network has its widths in its arrays; call it with config=None')
    if rngs:
      raise NotImplementedError('random layers (dropout) are not supported in a slim plain '
                                'network yet')
    images = jnp.asarray(images)
    flat = _flat(variables)
    program = self.program(images, train, mutable,
                           {path: jnp.result_type(value) for path, value in flat.items()})
    missing = [p for p in program.variable_paths if p not in flat]
    if missing:
      raise ValueError(f'slim network: variables {["/".join(p) for p in missing]} are missing')
    args = [flat[p] for p in program.variable_paths] + [images]
    outs = _Evaluation(program, self.config, images.shape[0]).run(program.jaxpr, program.consts,
                                                                   args)
    result = jax.tree_util.tree_unflatten(program.out_tree, outs)
    if mutable:
      return _logits(self.traced, result[0]), result[1]
    return _logits(self.traced, result)


def kernel_initializers(module: nn.Module, input_shape: Sequence[int]) -> dict[tuple, Any]:
  """Every kernel initialiser of a plain module's layers (flax's ``kernel_init`` attribute), by
  the kernel's variable path: read while the module initialises abstractly, nothing computed.
  (An NNX module's layers keep no initialiser: none found, its kernels stay sliced.)"""
  found = {}

  def record(call_next, args, kwargs, context):
    initializer = getattr(context.module, 'kernel_init', None)
    if context.method_name == '__call__' and callable(initializer):
      found[('params', *context.module.scope.path, 'kernel')] = initializer
    return call_next(*args, **kwargs)

  images = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: module.init(jax.random.key(0), images,
                                       **training_mode.mode_kwargs(module, False)))
  return found


def with_slim_kernels(module: nn.Module, input_shape: Sequence[int], variables,
                      key: jax.Array) -> dict:
  """Slim ``variables`` with every kernel drawn anew by its layer's own initialiser at the slim
  shape: the spread the author's initialiser gives the slim layer (a slice of a max-width
  fan-in draw would start a narrowed layer with a smaller one)."""
  flat = traverse_util.flatten_dict(dict(variables))
  for i, (path, initializer) in enumerate(sorted(kernel_initializers(module,
                                                                     input_shape).items())):
    if path in flat:
      flat[path] = initializer(jax.random.fold_in(key, i), flat[path].shape, flat[path].dtype)
  return traverse_util.unflatten_dict(flat)


def export_slim(module: nn.Module, traced: tracing.TracedNetwork, variables,
                config: Mapping[str, int]) -> tuple[SlimPlainNetwork, dict]:
  """The slim network of ``config`` and its (sliced) variables."""
  return SlimPlainNetwork(module, traced, config), slim_variables(traced, variables, config)


# ----------------------------------------------------------------------------------------------
# A plain module as a ``Network``: what the pipeline, profile and export run.


class PlainNetwork(Network):
  """A plain ``flax.linen`` module, traced once, as a ``Network``.

  ``models.create_network`` builds it when a model's factory returns a plain module instead of
  a ``Network``: the module as written is the max (1.0x) network, its units are the tracer's
  (named after their first producing layer), ``supernet()`` is the masked network and
  ``slim_module(config)`` the slim one. A uniform width multiplier w keeps
  ``make_divisible(max * w)`` channels of every unit, as the zoo's width multipliers do.
  """

  def __init__(self, name: str, module: nn.Module, input_shape: Sequence[int]):
    traced = tracing.trace_network(module, input_shape)
    training_mode.check_modes(module, input_shape)
    self.module = module
    self.traced = traced

    def uniform(width_mult: float) -> dict[str, int]:
      return {unit: min(width, channels_lib.make_divisible(width * width_mult))
              for unit, width in traced.max_widths.items()}

    # The official-style channel list: one entry per unit in unit order, then the classes (the
    # layout of the official MobileNet v1 list).
    super().__init__(name, lambda widths: SlimPlainNetwork(module, traced, widths),
                     traced.max_widths, uniform, tuple(input_shape), traced.num_classes,
                     official_layout=tuple(traced.max_widths) + (channels_lib.CLASSES,),
                     description='plain flax module,')
    self.input_segments = dict(traced.input_segments)
    self.output_segments = dict(traced.output_segments)
    self.param_axes = traced.param_axes  # resources count the params from the variables
    # One instance, so that whatever is compiled for the supernet is found again.
    self._supernet = MaskedPlainNetwork(module, traced)

  @property
  def layers(self) -> tuple[LayerRecord, ...]:
    return self.traced.layers

  def supernet(self) -> MaskedPlainNetwork:
    return self._supernet
