"""The tracer's rules, one per primitive: how each jaxpr equation moves axis labels.

Why a module of its own: the tracer (``tracing.py``) walks a jaxpr and resolves label classes
into units; what an equation does to its operands' axes is a rule registered here by primitive
name (``@rule('name', ...)``), so supporting a primitive is one function in this file. A rule
gets the equation with its operands' labels and origins (``Equation``) and returns the labels
and origins of its outputs; where an axis must not be a unit's channels, it files an event (the
resolution refuses it if the axis turns out to be one). A primitive without a rule is refused
wherever it touches a unit (``unknown``).

The rules are methods of ``Rules``, the tracer's base class: they read and write the tracer's
``labels`` (``tracing_labels.Labels``), ``layers``, ``param_paths`` and ``event``/``fresh``/``run``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable

from autoslim_jax.tracing_labels import (Layer, Path, TracingError, is_axis, join, name_stack,
                                         shape_of, sub_jaxpr)


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
CALLS = frozenset('pjit jit closed_call core_call custom_jvp_call custom_vjp_call '
                  'custom_vjp_call_jaxpr remat remat2 checkpoint'.split())
# Layout ops through which a variable stays "that variable" (its path), e.g. a kernel cast to
# the compute dtype or a bias reshaped for broadcasting.
_KEEPS_ORIGIN = frozenset('convert_element_type copy copy_p reshape broadcast_in_dim transpose '
                          'squeeze reduce_precision'.split())


@dataclasses.dataclass
class Equation:
  """One equation as a rule sees it."""
  eqn: Any
  ins: list  # each operand's labels, one per axis (None: an axis of size 1)
  ins_origin: list  # each operand's origin: a variable path, a layer index or None
  shapes: list
  out_shapes: list
  where: str  # 'module path: primitive at file:line', for messages
  prefix: str  # the enclosing call's name stack
  keep: list  # the outputs' origins by default (``Rules.origins``)

  @property
  def params(self):
    return self.eqn.params


RULES: dict[str, Callable[['Rules', Equation], tuple[list, list]]] = {}


def rule(*names: str):
  """Registers a rule for the primitives ``names``."""
  def register(fn):
    for name in names:
      RULES[name] = fn
    return fn
  return register


# ----------------------------------------------------------------------------------------------
# The rules.


@rule(*CALLS)
def _call(t, e):
  return t.call(e.eqn, e.ins, e.ins_origin, e.where, e.prefix)


@rule(*_UNARY, *_NARY)
def _elementwise(t, e):
  return [t.elementwise(e.ins, e.shapes, e.out_shapes[0], e.where)], e.keep


@rule('conv_general_dilated')
def _conv(t, e):
  return [t.conv(e.eqn, e.ins, e.ins_origin, e.shapes, e.out_shapes[0], e.where)], [
      len(t.layers) - 1]


@rule('dot_general')
def _dot(t, e):
  count = len(t.layers)
  out = t.dot(e.eqn, e.ins, e.ins_origin, e.shapes, e.out_shapes[0], e.where)
  return [out], [count if len(t.layers) > count else None]


@rule('broadcast_in_dim')
def _broadcast(t, e):
  return [t.broadcast(e.ins[0], e.shapes[0], e.out_shapes[0],
                      e.params['broadcast_dimensions'])], e.keep


@rule('reshape')
def _reshape(t, e):
  return [t.reshape(e.ins[0], e.shapes[0], e.out_shapes[0], e.where)], e.keep


@rule('transpose')
def _transpose(t, e):
  return [[e.ins[0][i] for i in e.params['permutation']]], e.keep


@rule('squeeze')
def _squeeze(t, e):
  return [[l for i, l in enumerate(e.ins[0]) if i not in e.params['dimensions']]], e.keep


@rule(*_REDUCE)
def _reduce(t, e):
  axes = e.params['axes']
  t.event([e.ins[0][a] for a in axes], e.where, 'reduces over the channel axis of')
  return [[l for i, l in enumerate(e.ins[0]) if i not in axes]], e.keep


@rule(*_CUMULATIVE)
def _cumulative(t, e):
  t.event([e.ins[0][e.params['axis']]], e.where, 'accumulates along the channel axis of')
  return [list(e.ins[0])], e.keep


@rule(*_WINDOW)
def _window(t, e):
  return [t.window(e.eqn, e.ins, e.shapes, e.out_shapes[0], e.where)] * len(e.out_shapes), e.keep


@rule('concatenate')
def _concatenate(t, e):
  return [t.concatenate(e.ins, e.shapes, e.out_shapes[0], e.params['dimension'], e.where)], e.keep


@rule('split')
def _split(t, e):
  return (t.split(e.ins[0], e.shapes[0], e.out_shapes, e.params['axis'], e.where),
          [None] * len(e.out_shapes))


@rule('gather')
def _gather(t, e):
  return [t.gather(e.eqn, e.ins, e.shapes, e.out_shapes[0], e.where)], e.keep


@rule('rev')
def _rev(t, e):  # a flip reorders channels: the active ones would no longer lead
  whole = [i not in e.params['dimensions'] for i in range(len(e.shapes[0]))]
  return [t.axiswise(e.ins[0], e.shapes[0], e.out_shapes[0], whole, e.where,
                     'reverses the channel axis of')], e.keep


@rule('pad')
def _pad(t, e):
  whole = [c == (0, 0, 0) for c in map(tuple, e.params['padding_config'])]
  return [t.axiswise(e.ins[0], e.shapes[0], e.out_shapes[0], whole, e.where,
                     'pads the channel axis of')], e.keep


@rule('slice')
def _slice(t, e):
  return [t.slice(e.ins[0], e.shapes[0], e.out_shapes[0], e.params, e.where)], e.keep


# ----------------------------------------------------------------------------------------------
# The tracer's rule methods and the helpers rules share.


class Rules:
  """The tracer's base: dispatches each equation to its rule (``RULES``)."""

  def equation(self, eqn, ins, ins_origin, where, prefix):
    name = eqn.primitive.name
    e = Equation(eqn, ins, ins_origin, [shape_of(v) for v in eqn.invars],
                 [shape_of(v) for v in eqn.outvars], where, prefix,
                 self.origins(name, ins_origin, len(eqn.outvars)))
    fn = RULES.get(name)
    if fn is None:
      return self.unknown(eqn, ins, e.out_shapes, where)
    return fn(self, e)

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
          # The record's flag counts a scale and a bias per channel (the zoo's format); a
          # BatchNorm without them is counted from its variables alone (param_axes).
          norm = ('params',) + b[1:-1]
          self.layers[a].batch_norm = (norm + ('scale',) in self.param_paths
                                       and norm + ('bias',) in self.param_paths)
    return [None] * n_out

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
    ins = [i for i, s in enumerate(shape) if is_axis(s)]
    outs = [j for j, s in enumerate(out_shape) if is_axis(s)]
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

  def cut(self, label, sizes) -> list | None:
    """The axis ``label`` cut into consecutive pieces of ``sizes``: each piece's label (None for
    a piece of size 0 or 1), or None where it cannot be cut exactly. Boundaries between a
    concatenation's segments cut there. A boundary inside one layer's channels (an atom of the
    axis with a producing layer) cuts them into fresh pieces, each a unit of its own that the
    layer writes segment by segment (``tracing._resolve``): GhostNet's and ShuffleNet's channel
    splits. A boundary inside any other atom (a fixed, spatial or parameter axis) cannot be cut.
    """
    bounds = list(itertools.accumulate(sizes))[:-1]
    cuts, offset = [], 0  # (atom's class, the cut offsets inside it): checked, then made
    for root, n in self.labels.flat_segments(label):
      inner = sorted({b - offset for b in bounds if offset < b < offset + n})
      if inner:
        cls = None if root is None else self.labels.classes[root]
        if cls is None or not cls.producers or cls.fixed or cls.nonchannel:
          return None
        cuts.append((cls, [0] + inner + [n]))
      offset += n
    for cls, ends in cuts:
      cls.segments = [(self.labels.new(stop - begin), stop - begin)
                      for begin, stop in zip(ends, ends[1:])]
    atoms, out = iter(self.labels.flat_segments(label)), []
    for size in sizes:
      total, group = 0, []
      while total < size:
        group.append(next(atoms))
        total += group[-1][1]
      if len(group) == 1:
        out.append(group[0][0])
      else:
        out.append(self.labels.new(size))
        if out[-1] is not None:
          self.labels.info(out[-1]).segments = group
    return out

  def split(self, labels, shape, out_shapes, axis, where):
    """``jnp.split``: the other axes are kept; the split axis is ``cut`` into the pieces. Any
    other split of a unit's channels is refused (the active channels of a slimmed unit lead its
    axis, so its pieces would not be the slim network's)."""
    sizes = [s[axis] for s in out_shapes]
    outs = [[l if i != axis else None for i, l in enumerate(labels)] for _ in out_shapes]
    label = labels[axis]
    pieces = None if label is None else self.cut(label, sizes)
    if pieces is None:
      pieces = [self.labels.new(size) for size in sizes]
      self.event([label] + pieces, where,
                 f'splits into pieces of {sizes} (inside a part of the axis no layer writes: '
                 'split a layer\'s channels, or a concatenation at its segments) the channel '
                 'axis of')
    for out, piece in zip(outs, pieces):
      out[axis] = piece
    return outs

  def slice(self, labels, shape, out_shape, params, where):
    """``x[..., a:b]``: an axis taken whole keeps its label; a range of channels (stride 1) is
    ``cut`` out as ``split`` cuts; anything else (strides, a range inside a part of the axis no
    layer writes) may not touch a unit's channels."""
    strides = params['strides'] or (1,) * len(shape)
    out = []
    for label, n, m, start, limit, stride in zip(labels, shape, out_shape,
                                                 params['start_indices'],
                                                 params['limit_indices'], strides):
      if start == 0 and limit == n and stride == 1:
        out.append(label)
        continue
      pieces = None
      if stride == 1 and label is not None:
        pieces = self.cut(label, [start, limit - start, n - limit])
      if pieces is not None:
        out.append(pieces[1])
      else:
        out.append(self.labels.new(m))
        self.event([label, out[-1]], where, 'slices the channel axis of')
    return out

  def gather(self, eqn, ins, shapes, out_shape, where):
    """Indexing (``jnp.take``, fancy indexing): operand axes taken whole pass through to the
    output; an indexed or partly taken axis may not be a unit's channels."""
    p = eqn.params
    dims = p['dimension_numbers']
    operand, indices = ins
    out = [None] * len(out_shape)
    offset = iter(dims.offset_dims)
    indexed = set(dims.start_index_map)
    for i, (label, size) in enumerate(zip(operand, shapes[0])):
      if i in dims.collapsed_slice_dims or i in dims.operand_batching_dims:
        self.event([label], where, 'gathers (indexes) along the channel axis of')
        continue
      d = next(offset)
      if i not in indexed and p['slice_sizes'][i] == size and out_shape[d] == size:
        out[d] = label
      else:
        out[d] = self.labels.new(out_shape[d])
        self.event([label, out[d]], where, 'gathers (indexes) along the channel axis of')
    for d, size in enumerate(out_shape):
      if d not in dims.offset_dims:
        out[d] = self.labels.new(size)
    self.event(indices, where, 'indexes with an array over the channel axis of')
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
      raise TracingError(f'{where}: layer {join(path)}: batch_group_count '
                         f'{p["batch_group_count"]} is not supported')
    # A conv windows over its input's spatial axes: none of them may be a unit's channels.
    self.event([x[d] for d in lhs_spec[2:]], where, 'convolves across (as a spatial axis) the '
               'channel axis of')
    out = [None] * len(out_shape)
    out[out_spec[0]] = x[lhs_spec[0]]
    for d in out_spec[2:]:
      out[d] = self.labels.new(out_shape[d], nonchannel=f'a spatial axis of {join(path)}')
    spatial = [shapes[1][d] for d in rhs_spec[2:]]
    if len(set(spatial)) > 1:
      raise TracingError(f'{where}: layer {join(path)}: kernel {spatial} is not square (the '
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
          f'{where}: layer {join(path)}: grouped conv (feature_group_count={groups}, {cin} '
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
    self.layers.append(Layer(path, kind, kernel_size, in_label, out_label, cin, cout, height,
                              width, has_bias))
    return out

  def call(self, eqn, ins, ins_origin, where, prefix):
    sub = sub_jaxpr(eqn)
    if sub is None:
      return self.unknown(eqn, ins, [shape_of(v) for v in eqn.outvars], where)
    jaxpr, _ = sub  # its constants get labels of their own in run()
    scope = name_stack(eqn, prefix)
    return self.run(jaxpr, ins[len(ins) - len(jaxpr.invars):],
                    ins_origin[len(ins) - len(jaxpr.invars):], scope)

  def unknown(self, eqn, ins, out_shapes, where):
    outs = [self.fresh(s) for s in out_shapes]
    self.event([l for labels in ins + outs for l in labels], where,
               f'applies {eqn.primitive.name}, which this analysis does not know, to an array '
               'that carries (on some axis) the channels of')
    return outs, [None] * len(outs)
