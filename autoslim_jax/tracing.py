"""Channel units of a plain Flax network, found by tracing it: no rewrite with ``SlimConv``.

Why: rewriting one's own network with ``SlimConv`` / ``SlimDense`` and naming every layer's
units is where people give up, and the PyTorch tracers that do it automatically are where their
users' bug reports pile up. A JAX network is a traceable function, so the coupling of channels
can be read off its jaxpr exactly instead of guessed from module types.

How: ``trace_network`` traces ``module.apply`` on shapes only (``jax.make_jaxpr``; nothing is
compiled), gives every array axis of size > 1 a label and merges labels in a union-find as the
equations demand: operands of an elementwise op share their aligned axes (a residual addition,
a squeeze-and-excite gate, a BatchNorm's statistics and the features they normalise), a
depthwise conv shares its input, output and kernel channel axes, a plain conv or dense layer
shares its input channels with its kernel's input axis and *produces* a new channel axis (its
kernel's output axis). A channel concatenation makes a *composite* axis whose segments are its
inputs' axes, so a conv reading it is governed by every segment's unit.

A unit is a class of labels that contains a produced axis and is not fixed; fixed are every
axis of the input images (their channels) and of the outputs (the classes). What the analysis
cannot prove to slim exactly is refused, naming the op and its module: reductions, windows,
slices or pads across a unit's channel axis (LayerNorm, GroupNorm, channel attention by
means over channels), reshapes that merge or split it, grouped convs that are neither plain nor
depthwise, contractions over it without a parameter kernel, and any primitive not known here
that touches it.

The result gives each unit its name (its first producing layer's path), max width and the
(variable path, axis, slice) list it controls, and the layers as ``models.base.LayerRecord``s
in the zoo's format, so ``resources.py`` works on a traced network unchanged.

Size-1 axes carry no label (broadcasting cannot tell them from real channels), so a layer with
one output channel is a fixed size; that is also why a conv reading one channel (a grayscale
image) is a plain conv, never mistaken for a depthwise one: depthwise is read from
``feature_group_count`` alone.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from autoslim_jax import training_mode
from autoslim_jax.models.base import LayerRecord, Network

TRACE_BATCH = 2  # > 1, so that the batch axis has a label of its own

Path = tuple[str, ...]


class TracingError(ValueError):
  """The network cannot be slimmed as traced; the message names the layer and the reason."""


@dataclasses.dataclass(frozen=True)
class ParamAxis:
  """The part of one variable a unit controls: ``variable[..., start:stop, ...]`` on ``axis``
  (the whole axis unless the axis is a concatenation of several units' channels)."""
  path: Path  # in the variables tree, collection first: ('params', 'conv1', 'kernel')
  axis: int
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class Unit:
  name: str  # the path of the first layer producing it, '/'-joined
  width: int  # the max (traced) channel count
  producers: tuple[Path, ...]  # the conv / dense layers whose outputs are this unit
  params: tuple[ParamAxis, ...]


@dataclasses.dataclass(frozen=True)
class TracedNetwork:
  """What ``trace_network`` found.

  ``input_segments``: for a layer reading a channel concatenation, its input channels as
  ``(unit or None, channels)`` segments; its ``LayerRecord.in_unit`` is then ``None`` (the
  record format has one input unit) and ``resources.ResourceModel`` counts its input channels
  from the segments (``Network.input_segments``).
  ``logits_index``: which element of a tuple output is the logits (None: the output is one array).
  ``num_classes``: the logits' last axis.
  """
  units: tuple[Unit, ...]
  layers: tuple[LayerRecord, ...]
  input_segments: Mapping[Path, tuple[tuple[str | None, int], ...]]
  input_shape: tuple[int, ...]
  logits_index: int | None
  num_classes: int

  @property
  def max_widths(self) -> dict[str, int]:
    return {u.name: u.width for u in self.units}

  def resource_network(self, name: str = 'traced') -> Network:
    """A ``Network`` carrying the traced layer table and input segments, enough for
    ``resources.ResourceModel`` without a module (``plain_network.PlainNetwork`` is the whole
    network)."""
    def build(widths):
      raise NotImplementedError('a resource network builds no module; use '
                                'plain_network.PlainNetwork')
    network = Network(name, build, self.max_widths, lambda mult: dict(self.max_widths),
                      tuple(self.input_shape), self.num_classes)
    network.__dict__['layers'] = self.layers  # fills the cached property: nothing to re-trace
    network.input_segments = dict(self.input_segments)
    return network


# ----------------------------------------------------------------------------------------------
# Axis labels: a union-find with sizes, composite (concatenated) axes and per-class facts.


@dataclasses.dataclass
class _Class:
  size: int
  producers: list = dataclasses.field(default_factory=list)  # layer indices
  fixed: str | None = None  # why it is fixed
  nonchannel: str | None = None  # what spatial / batch axis it is
  segments: list | None = None  # composite: [(label or None, size)], in channel order


class _Labels:
  """Union-find over axis labels; each root carries its class's facts."""

  def __init__(self):
    self.parent: list[int] = []
    self.classes: dict[int, _Class] = {}

  def new(self, size: int, nonchannel: str | None = None) -> int | None:
    if not _is_axis(size):
      return None
    label = len(self.parent)
    self.parent.append(label)
    self.classes[label] = _Class(size, nonchannel=nonchannel)
    return label

  def find(self, label: int) -> int:
    while self.parent[label] != label:
      self.parent[label] = self.parent[self.parent[label]]
      label = self.parent[label]
    return label

  def info(self, label: int) -> _Class:
    return self.classes[self.find(label)]

  def unify(self, a: int | None, b: int | None, where: str) -> None:
    if a is None or b is None:
      return
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    ca, cb = self.classes[ra], self.classes[rb]
    assert ca.size == cb.size, (where, ca.size, cb.size)  # jaxprs are shape-checked
    self.parent[rb] = ra
    del self.classes[rb]
    ca.producers += cb.producers
    ca.fixed = ca.fixed or cb.fixed
    ca.nonchannel = ca.nonchannel or cb.nonchannel
    if ca.segments is not None and cb.segments is not None:
      if [s for _, s in ca.segments] != [s for _, s in cb.segments]:
        raise TracingError(f'{where}: joins channel concatenations with different segment '
                           f'sizes {[s for _, s in ca.segments]} and {[s for _, s in cb.segments]}')
      for (x, _), (y, _) in zip(ca.segments, cb.segments):
        self.unify(x, y, where)
    elif cb.segments is not None:
      ca.segments = cb.segments

  def flat_segments(self, label: int, depth: int = 0) -> list[tuple[int | None, int]]:
    """The atomic (root, size) pieces of an axis, in order (one piece unless composite)."""
    if depth > 100:
      raise TracingError('internal: cyclic channel concatenation')
    root = self.find(label)
    segments = self.classes[root].segments
    if segments is None:
      return [(root, self.classes[root].size)]
    pieces = []
    for seg, size in segments:
      pieces += [(None, size)] if seg is None else self.flat_segments(seg, depth + 1)
    return pieces


# ----------------------------------------------------------------------------------------------
# Primitive classes.

_UNARY = frozenset("""
    neg sign floor ceil round is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan asin
    acos atan sinh cosh asinh acosh atanh sqrt rsqrt cbrt abs erf erfc erf_inv lgamma digamma
    integer_pow square convert_element_type copy copy_p reduce_precision stop_gradient real imag
    conj not population_count clz optimization_barrier
    """.split())
_NARY = frozenset("""
    add add_any sub mul div rem pow max min atan2 nextafter and or xor eq ne lt le gt ge select_n
    clamp shift_left shift_right_logical shift_right_arithmetic complex
    """.split())
_REDUCE = frozenset('reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor '
                    'argmax argmin'.split())
_CUMULATIVE = frozenset('cumsum cumprod cummax cummin cumlogsumexp'.split())
_WINDOW = frozenset('reduce_window_sum reduce_window_max reduce_window_min reduce_window'.split())
_CALLS = frozenset('pjit jit closed_call core_call custom_jvp_call custom_vjp_call '
                   'custom_vjp_call_jaxpr remat remat2 checkpoint'.split())
# Layout ops through which a variable stays "that variable" (its path), e.g. a kernel cast to
# the compute dtype or a bias reshaped for broadcasting.
_KEEPS_ORIGIN = frozenset('convert_element_type copy copy_p reshape broadcast_in_dim transpose '
                          'squeeze reduce_precision'.split())


@dataclasses.dataclass
class _Event:
  """An op that is safe only where ``labels`` are not a unit's channels."""
  labels: list
  where: str
  reason: str


@dataclasses.dataclass
class _Layer:
  path: Path
  kind: str
  kernel_size: int
  in_label: int | None
  out_label: int | None
  in_channels: int
  out_channels: int
  out_height: int
  out_width: int
  has_bias: bool
  batch_norm: bool = False


# ----------------------------------------------------------------------------------------------
# The tracer proper.


class _Tracer:
  """Walks a jaxpr, propagating axis labels equation by equation."""

  def __init__(self, variable_paths: Sequence[Path], param_paths: set):
    self.labels = _Labels()
    self.events: list[_Event] = []
    self.layers: list[_Layer] = []
    self.variable_paths = variable_paths
    self.param_paths = param_paths

  # -- helpers

  def fresh(self, shape, nonchannel: str | None = None) -> list:
    return [self.labels.new(s, nonchannel) for s in shape]

  def event(self, labels, where: str, reason: str) -> None:
    labels = [l for l in labels if l is not None]
    if labels:
      self.events.append(_Event(labels, where, reason))

  # -- the walk

  def run(self, jaxpr, in_labels: list, in_origins: list, prefix: str) -> tuple[list, list]:
    env, origin = {}, {}

    def read(v):
      if isinstance(v, jcore.Literal):
        shape = np.shape(v.val)
        return self.fresh(shape) if shape else []
      return env[v]

    for v, labels, o in zip(jaxpr.invars, in_labels, in_origins):
      env[v], origin[v] = labels, o
    for v in jaxpr.constvars:
      env[v], origin[v] = self.fresh(v.aval.shape), None
    for eqn in jaxpr.eqns:
      where = _describe(eqn, prefix)
      ins = [read(v) for v in eqn.invars]
      ins_origin = [None if isinstance(v, jcore.Literal) else origin.get(v) for v in eqn.invars]
      outs, outs_origin = self.equation(eqn, ins, ins_origin, where, prefix)
      for v, labels, o in zip(eqn.outvars, outs, outs_origin):
        if not isinstance(v, jcore.DropVar):
          env[v], origin[v] = labels, o
    return [read(v) for v in jaxpr.outvars], [
        None if isinstance(v, jcore.Literal) else origin.get(v) for v in jaxpr.outvars]

  def equation(self, eqn, ins, ins_origin, where, prefix):
    name = eqn.primitive.name
    shapes = [_shape(v) for v in eqn.invars]
    out_shapes = [_shape(v) for v in eqn.outvars]
    p = eqn.params
    keep = self.origins(name, ins_origin, len(eqn.outvars))
    if name in _CALLS:
      return self.call(eqn, ins, ins_origin, where, prefix)
    if name in _UNARY or name in _NARY:
      return [self.elementwise(ins, shapes, out_shapes[0], where)], keep
    if name == 'conv_general_dilated':
      return [self.conv(eqn, ins, ins_origin, shapes, out_shapes[0], where)], [
          len(self.layers) - 1]
    if name == 'dot_general':
      count = len(self.layers)
      out = self.dot(eqn, ins, ins_origin, shapes, out_shapes[0], where)
      return [out], [count if len(self.layers) > count else None]
    if name == 'broadcast_in_dim':
      return [self.broadcast(ins[0], shapes[0], out_shapes[0], p['broadcast_dimensions'])], keep
    if name == 'reshape':
      return [self.reshape(ins[0], shapes[0], out_shapes[0], where)], keep
    if name == 'transpose':
      return [[ins[0][i] for i in p['permutation']]], keep
    if name == 'squeeze':
      return [[l for i, l in enumerate(ins[0]) if i not in p['dimensions']]], keep
    if name in _REDUCE:
      axes = p['axes']
      self.event([ins[0][a] for a in axes], where, 'reduces over the channel axis of')
      return [[l for i, l in enumerate(ins[0]) if i not in axes]], keep
    if name in _CUMULATIVE:
      self.event([ins[0][p['axis']]], where, 'accumulates along the channel axis of')
      return [list(ins[0])], keep
    if name in _WINDOW:
      return [self.window(eqn, ins, shapes, out_shapes[0], where)] * len(eqn.outvars), keep
    if name == 'concatenate':
      return [self.concatenate(ins, shapes, out_shapes[0], p['dimension'], where)], keep
    if name == 'rev':  # a flip reorders channels: the active ones would no longer lead
      return [self.axiswise(ins[0], shapes[0], out_shapes[0],
                            [i not in p['dimensions'] for i in range(len(shapes[0]))],
                            where, 'reverses the channel axis of')], keep
    if name == 'pad':
      return [self.axiswise(ins[0], shapes[0], out_shapes[0],
                            [c == (0, 0, 0) for c in map(tuple, p['padding_config'])],
                            where, 'pads the channel axis of')], keep
    if name == 'slice':
      strides = p['strides'] or (1,) * len(shapes[0])
      whole = [st == 0 and lim == n and sd == 1 for st, lim, n, sd in
               zip(p['start_indices'], p['limit_indices'], shapes[0], strides)]
      return [self.axiswise(ins[0], shapes[0], out_shapes[0], whole, where,
                            'slices the channel axis of')], keep
    return self.unknown(eqn, ins, out_shapes, where)

  def origins(self, name, ins_origin, n_out):
    """What each output is: a variable (path) seen through layout ops, or a layer's output
    (index) seen through casts and its bias addition. A BatchNorm at inference subtracts its
    running mean from its input: when that input is a layer's output, the layer is marked as
    batch-normalised (the zoo's records count the BatchNorm's parameters with the layer)."""
    first = ins_origin[0] if ins_origin else None
    if name in _KEEPS_ORIGIN and first is not None:
      if isinstance(first, tuple) or name in ('convert_element_type', 'copy', 'copy_p'):
        return [first]
    if name in ('add', 'sub') and len(ins_origin) == 2:
      a, b = ins_origin
      if isinstance(b, int) and name == 'add':
        a, b = b, a
      if isinstance(a, int) and isinstance(b, tuple):
        if name == 'add' and b in self.param_paths:  # the layer's bias
          return [a]
        if name == 'sub' and b[0] == 'batch_stats' and b[-1] == 'mean':
          self.layers[a].batch_norm = True
    return [None] * n_out

  # -- rules

  def elementwise(self, ins, shapes, out_shape, where):
    """Operands share every aligned axis of size > 1 (jaxprs broadcast explicitly before)."""
    out = []
    for axis, size in enumerate(out_shape):
      label = None
      for labels, shape in zip(ins, shapes):
        if len(shape) == len(out_shape) and shape[axis] == size and labels[axis] is not None:
          if label is None:
            label = labels[axis]
          else:
            self.labels.unify(label, labels[axis], where)
      out.append(label if label is not None else self.labels.new(size))
    return out

  def broadcast(self, labels, shape, out_shape, dims):
    out = self.fresh(out_shape)
    for i, d in enumerate(dims):
      if shape[i] == out_shape[d]:
        out[d] = labels[i]
    return out

  def reshape(self, labels, shape, out_shape, where):
    """Axes kept 1:1 (size-1 axes inserted or removed) keep their labels; merged or split axes
    get new labels, and none of them may be a unit's channels."""
    out = [None] * len(out_shape)
    ins = [i for i, s in enumerate(shape) if _is_axis(s)]
    outs = [j for j, s in enumerate(out_shape) if _is_axis(s)]
    i = j = 0
    while i < len(ins) and j < len(outs):
      group_in, group_out = [ins[i]], [outs[j]]
      a, b = shape[ins[i]], out_shape[outs[j]]
      while a != b:
        if a < b:
          i += 1
          group_in.append(ins[i])
          a *= shape[ins[i]]
        else:
          j += 1
          group_out.append(outs[j])
          b *= out_shape[outs[j]]
      if len(group_in) == 1 and len(group_out) == 1:
        out[group_out[0]] = labels[group_in[0]]
      else:
        for k in group_out:
          out[k] = self.labels.new(out_shape[k])
        self.event([labels[k] for k in group_in] + [out[k] for k in group_out], where,
                   'reshapes (merges or splits) the channel axis of')
      i, j = i + 1, j + 1
    return out

  def axiswise(self, labels, shape, out_shape, whole, where, reason):
    """Axes left whole keep their labels; the others get new ones, and may not be channels."""
    out = []
    for label, n, m, keep in zip(labels, shape, out_shape, whole):
      if keep and n == m:
        out.append(label)
      else:
        new = self.labels.new(m)
        self.event([label, new], where, reason)
        out.append(new)
    return out

  def window(self, eqn, ins, shapes, out_shape, where):
    p = eqn.params
    n = len(out_shape)
    padding = p.get('padding', ((0, 0),) * n)
    ones = (1,) * n
    whole = [w == 1 and s == 1 and tuple(pd) == (0, 0) and bd == 1 and wd == 1
             for w, s, pd, bd, wd in zip(p['window_dimensions'], p['window_strides'], padding,
                                         p.get('base_dilation', ones),
                                         p.get('window_dilation', ones))]
    return self.axiswise(ins[0], shapes[0], out_shape, whole, where,
                         'pools across the channel axis of')

  def concatenate(self, ins, shapes, out_shape, dimension, where):
    out = []
    for axis, size in enumerate(out_shape):
      if axis == dimension:
        label = self.labels.new(size)
        if label is not None:
          self.labels.info(label).segments = [(l[axis], s[axis]) for l, s in zip(ins, shapes)]
        out.append(label)
      else:
        out.append(self.elementwise([[l[axis]] for l in ins], [(s[axis],) for s in shapes],
                                    (size,), where)[0])
    return out

  def conv(self, eqn, ins, ins_origin, shapes, out_shape, where):
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
    x, kernel = ins[0], ins[1]
    path = self.kernel_path(ins_origin[1], where, 'conv')
    cin, cout = shapes[0][lhs_spec[1]], out_shape[out_spec[1]]
    kernel_in = shapes[1][rhs_spec[1]]
    groups = p['feature_group_count']
    if p['batch_group_count'] != 1:
      raise TracingError(f'{where}: layer {_join(path)}: batch_group_count '
                         f'{p["batch_group_count"]} is not supported')
    # A conv windows over its input's spatial axes: none of them may be a unit's channels.
    self.event([x[d] for d in lhs_spec[2:]], where, 'convolves across (as a spatial axis) the '
               'channel axis of')
    out = [None] * len(out_shape)
    out[out_spec[0]] = x[lhs_spec[0]]
    for d in out_spec[2:]:
      out[d] = self.labels.new(out_shape[d], nonchannel=f'a spatial axis of {_join(path)}')
    spatial = [shapes[1][d] for d in rhs_spec[2:]]
    if len(set(spatial)) > 1:
      raise TracingError(f'{where}: layer {_join(path)}: kernel {spatial} is not square (the '
                         'layer table holds one kernel size)')
    if groups == 1:
      kind = 'conv'
      self.labels.unify(x[lhs_spec[1]], kernel[rhs_spec[1]], where)
      out[out_spec[1]] = kernel[rhs_spec[0]]
    elif groups == cin and kernel_in == 1 and cout == cin:
      kind = 'depthwise'  # one filter per channel: input, kernel and output channels are one
      self.labels.unify(x[lhs_spec[1]], kernel[rhs_spec[0]], where)
      out[out_spec[1]] = x[lhs_spec[1]]
    else:
      raise TracingError(
          f'{where}: layer {_join(path)}: grouped conv (feature_group_count={groups}, {cin} '
          f'input and {cout} output channels) is neither a plain conv (1 group) nor depthwise '
          '(one group per input channel, as many outputs); it cannot be slimmed')
    height = out_shape[out_spec[2]] if len(out_spec) > 2 else 1
    width = out_shape[out_spec[3]] if len(out_spec) > 3 else 1
    return self.add_layer(path, kind, spatial[0] if spatial else 1, x[lhs_spec[1]],
                          out, out_spec[1], cin, cout, height, width)

  def dot(self, eqn, ins, ins_origin, shapes, out_shape, where):
    (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
    lhs, rhs = ins
    for a, b in itertools.chain(zip(lc, rc), zip(lb, rb)):
      self.labels.unify(lhs[a], rhs[b], where)
    lfree = [i for i in range(len(lhs)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(rhs)) if i not in rc and i not in rb]
    out = [lhs[a] for a in lb] + [lhs[i] for i in lfree] + [rhs[i] for i in rfree]
    is_param = [o is not None and o in self.param_paths for o in ins_origin]
    # A dense layer: activations (lhs) times a parameter kernel (rhs) contracting one axis.
    if is_param[1] and not is_param[0] and len(lc) == 1 and not lb and len(rfree) == 1:
      path = self.kernel_path(ins_origin[1], where, 'dense')
      height, width = (out_shape[1], out_shape[2]) if len(out_shape) == 4 else (1, 1)
      return self.add_layer(path, 'dense', 1, lhs[lc[0]], out, len(out) - 1,
                            shapes[0][lc[0]], out_shape[-1], height, width)
    if not any(is_param):
      self.event([lhs[a] for a in lc], where,
                 'contracts (without a parameter kernel) the channel axis of')
    return out

  def kernel_path(self, origin, where, what) -> Path:
    if origin is None or origin not in self.param_paths:
      raise TracingError(f'{where}: the {what} kernel is not a parameter of the network (a '
                         'computed kernel cannot be slimmed by this analysis)')
    return origin[1:-1]  # ('params', ..., 'kernel') -> the layer module's path

  def add_layer(self, path, kind, kernel_size, in_label, out, out_axis, cin, cout, height,
                width):
    out_label = out[out_axis]
    if kind != 'depthwise':
      if out_label is None and cout > 1:  # a kernel axis without a label cannot happen
        out_label = out[out_axis] = self.labels.new(cout)
      if out_label is not None:
        self.labels.info(out_label).producers.append(len(self.layers))
    has_bias = ('params',) + path + ('bias',) in self.param_paths
    self.layers.append(_Layer(path, kind, kernel_size, in_label, out_label, cin, cout, height,
                              width, has_bias))
    return out

  def call(self, eqn, ins, ins_origin, where, prefix):
    sub = _sub_jaxpr(eqn)
    if sub is None:
      return self.unknown(eqn, ins, [_shape(v) for v in eqn.outvars], where)
    jaxpr, _ = sub  # its constants get labels of their own in run()
    scope = _name_stack(eqn, prefix)
    return self.run(jaxpr, ins[len(ins) - len(jaxpr.invars):],
                    ins_origin[len(ins) - len(jaxpr.invars):], scope)

  def unknown(self, eqn, ins, out_shapes, where):
    outs = [self.fresh(s) for s in out_shapes]
    self.event([l for labels in ins + outs for l in labels], where,
               f'applies {eqn.primitive.name}, which this analysis does not know, to the channel '
               'axis of')
    return outs, [None] * len(outs)


def _shape(v) -> tuple[int, ...]:
  return tuple(getattr(v.aval, 'shape', ()))


def _join(path: Path) -> str:
  return '/'.join(path)


def _name_stack(eqn, prefix: str) -> str:
  stack = str(eqn.source_info.name_stack)
  return '/'.join(s for s in (prefix, stack) if s)


def _describe(eqn, prefix: str) -> str:
  """'module path: primitive (file:line)' for error messages."""
  from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
  line = source_info_util.summarize(eqn.source_info)
  at = f' at {line}' if line else ''
  return f'{_name_stack(eqn, prefix) or "<top>"}: {eqn.primitive.name}{at}'


def _is_axis(size) -> bool:
  """A size that is an axis, not an inserted 1: above 1, or symbolic (an exported batch)."""
  return not isinstance(size, (int, np.integer)) or size > 1


def _sub_jaxpr(eqn):
  for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
    sub = eqn.params.get(key)
    if isinstance(sub, jcore.ClosedJaxpr):
      return sub.jaxpr, sub.consts
    if isinstance(sub, jcore.Jaxpr):
      return sub, ()
  return None


# ----------------------------------------------------------------------------------------------
# Resolution: classes -> units, events -> refusals, layers -> records.


def _resolve(tracer: _Tracer, var_labels, output_labels):
  labels = tracer.labels
  for leaf in output_labels:
    for label in leaf:
      if label is not None:
        labels.info(label).fixed = labels.info(label).fixed or 'an output'
  # A fixed concatenation fixes its segments (until nothing changes: segments may nest).
  changed = True
  while changed:
    changed = False
    for root, cls in list(labels.classes.items()):
      if cls.fixed and cls.segments is not None:
        for seg, _ in labels.flat_segments(root):
          if seg is not None and not labels.classes[seg].fixed:
            labels.classes[seg].fixed = cls.fixed
            changed = True

  def is_unit(root):
    cls = labels.classes[root]
    return bool(cls.producers) and not cls.fixed and cls.segments is None

  for root, cls in labels.classes.items():
    if cls.producers and cls.segments is not None and not cls.fixed:
      layer = tracer.layers[cls.producers[0]]
      raise TracingError(f'layer {_join(layer.path)}: its output channels are joined (added or '
                         'multiplied) with a channel concatenation; not supported')
    if is_unit(root) and cls.nonchannel:
      layer = tracer.layers[cls.producers[0]]
      raise TracingError(f'layer {_join(layer.path)}: its output channels meet {cls.nonchannel}; '
                         'a channel axis used as a spatial or batch axis cannot be slimmed')

  def units_of(label):
    if label is None:
      return []
    return [s for s, _ in labels.flat_segments(label) if s is not None and is_unit(s)]

  roots = sorted((r for r in labels.classes if is_unit(r)),
                 key=lambda r: labels.classes[r].producers[0])
  names = {}
  for root in roots:
    layer = tracer.layers[labels.classes[root].producers[0]]
    name = _join(layer.path)
    names[root] = name if name not in names.values() else f'{name}#{len(names)}'

  for event in tracer.events:
    touched = [u for l in event.labels for u in units_of(l)]
    if touched:
      raise TracingError(f'{event.where}: {event.reason} unit {names[touched[0]]!r}; the masked '
                         'network would not equal its slim export')

  params = {root: [] for root in roots}
  for path, var in zip(tracer.variable_paths, var_labels):
    for axis, label in enumerate(var):
      if label is None:
        continue
      start = 0
      for seg, size in labels.flat_segments(label):
        if seg is not None and is_unit(seg):
          params[seg].append(ParamAxis(path, axis, start, start + size))
        start += size

  units = tuple(Unit(names[r], labels.classes[r].size,
                     tuple(tracer.layers[i].path for i in labels.classes[r].producers),
                     tuple(params[r])) for r in roots)

  def unit_name(label):
    if label is None:
      return None
    root = labels.find(label)
    return names.get(root) if labels.classes[root].segments is None else None

  records, segments = [], {}
  for layer in tracer.layers:
    records.append(LayerRecord(
        path=layer.path, kind=layer.kind, kernel_size=layer.kernel_size,
        in_unit=unit_name(layer.in_label), out_unit=unit_name(layer.out_label),
        in_channels=layer.in_channels, out_channels=layer.out_channels,
        out_height=layer.out_height, out_width=layer.out_width, has_bias=layer.has_bias,
        batch_norm=layer.batch_norm))
    if layer.in_label is not None and labels.info(layer.in_label).segments is not None:
      segments[layer.path] = tuple((names.get(s), size)
                                   for s, size in labels.flat_segments(layer.in_label))
  return units, tuple(records), segments


# ----------------------------------------------------------------------------------------------
# Entry point.


def _call_kwargs(module: nn.Module) -> dict:
  """The inference mode's arguments (``training_mode``): the inference graph, whose channel
  structure is the training graph's (BatchNorm reads its running statistics)."""
  return training_mode.mode_kwargs(module, False)


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def trace_network(module: nn.Module, input_shape: Sequence[int],
                  call_kwargs: Mapping[str, Any] | None = None) -> TracedNetwork:
  """Finds the channel units of a plain Flax module called on images of ``input_shape``.

  Args:
    module: a ``flax.linen`` module at its max widths, called as ``module(x, **call_kwargs)``.
    input_shape: one image's shape, channels last, e.g. (32, 32, 3).
    call_kwargs: keyword arguments of the call; default: inference mode
      (``training_mode.mode_kwargs``: ``train=False``, ``deterministic=True``, ...).

  The module returns the logits, or a tuple / list whose first element is the logits (other
  elements' axes are fixed as well: callers may read them at every config).

  Raises:
    TracingError: naming the op and module of what cannot be slimmed, and why.
  """
  kwargs = dict(_call_kwargs(module) if call_kwargs is None else call_kwargs)
  images = jax.ShapeDtypeStruct((TRACE_BATCH,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), images)
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  variable_paths = [tuple(_key_name(k) for k in keypath) for keypath, _ in leaves]
  param_paths = {p for p in variable_paths if p[0] == 'params'}

  def apply(variables, x):
    out, _ = module.apply(variables, x, mutable=True, **kwargs)
    return out

  closed, out_tree = jax.make_jaxpr(apply, return_shape=True)(variables, images)
  logits_index = None
  if isinstance(out_tree, (tuple, list)):
    if not out_tree or not isinstance(out_tree[0], jax.ShapeDtypeStruct):
      raise TracingError(f'{type(module).__name__} returns a {type(out_tree).__name__} whose '
                         'first element is not an array; return the logits, or a tuple with '
                         'the logits first')
    logits_index = 0
  elif not isinstance(out_tree, jax.ShapeDtypeStruct):
    raise TracingError(f'{type(module).__name__} returns {type(out_tree).__name__}; return the '
                       'logits, or a tuple with the logits first')
  logits = out_tree if logits_index is None else out_tree[logits_index]
  if logits.shape[:1] != (TRACE_BATCH,) or len(logits.shape) != 2:
    raise TracingError(f'{type(module).__name__} returns logits of shape {logits.shape} for '
                       f'{TRACE_BATCH} images; the logits must be [batch, classes]')

  tracer = _Tracer(variable_paths, param_paths)
  var_labels = [tracer.fresh(np.shape(leaf)) for _, leaf in leaves]
  image_labels = [tracer.labels.new(images.shape[0], 'the batch axis')] + [
      tracer.labels.new(s, 'a spatial axis of the images') for s in images.shape[1:-1]] + [
      tracer.labels.new(images.shape[-1])]
  for label in image_labels:
    if label is not None:
      tracer.labels.info(label).fixed = 'the input images'
  outs, _ = tracer.run(closed.jaxpr, var_labels + [image_labels],
                       list(variable_paths) + [None], '')
  units, records, segments = _resolve(tracer, var_labels, outs)
  return TracedNetwork(units, records, segments, tuple(input_shape), logits_index,
                       logits.shape[-1])
