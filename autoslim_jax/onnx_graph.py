"""A slim network's inference program as an ONNX graph, built from its jaxpr.

Why our own converter: jax2onnx pins orbax-checkpoint below the version this package needs, and
the route through TensorFlow (jax2tf, tf2onnx) would bring TensorFlow back. A slim CNN in
inference mode is a short list of primitives, so the jaxpr is translated directly with the
``onnx`` package's helpers:

- The weights are the jaxpr's constants. Every equation whose operands are all known is computed
  here (BatchNorm's ``scale * rsqrt(var + eps)``, kernel slices and casts), so the graph holds
  only what depends on the images.
- Convolutions run in ONNX's NCHW layout; a rank-4 value remembers whether it is stored NCHW,
  and a Transpose is written only where an operation needs JAX's NHWC order (a flatten, say).
  The model's input and output are JAX's: NHWC images in, logits out, batch dimension free.
- A convolution or dense layer stays open while constants are added to, subtracted from,
  multiplied with or divided into its output per channel: BatchNorm (and a bias) are folded
  into its weights and bias before the node is written, so the deployed graph has no BatchNorm.

Anything outside the supported primitives raises ``ConversionError`` naming the primitive.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from autoslim_jax import tracing_labels
from autoslim_jax import tracing_rules

OPSET = 17
INPUT_NAME = 'images'
OUTPUT_NAME = 'logits'
# JAX's NHWC axis -> its position in NCHW, and back.
_NCHW_POSITION = {0: 0, 3: 1, 1: 2, 2: 3}
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


class ConversionError(ValueError):
  """The program uses something the ONNX translation does not cover."""


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("the ONNX export needs the onnx package: pip install -e '.[onnx]' "
                      '(onnx and onnxruntime)') from None
  return onnx


@dataclasses.dataclass
class _Affine:
  """A convolution or dense layer not yet written: ``op(x, weight) + bias``, with weight's
  output channels first (Conv: OIHW; Gemm: [out, in], transB)."""
  op: str  # 'Conv' or 'Gemm'
  x: str
  weight: np.ndarray
  bias: np.ndarray
  attributes: dict


@dataclasses.dataclass
class _Value:
  """One array of the program: known (``const``, JAX's axis order) or a graph tensor."""
  ndim: int
  name: str | None = None
  const: np.ndarray | None = None
  nchw: bool = False  # rank 4, stored NCHW
  partial: bool = False  # some size-1 axes stand for broadcast ones (ONNX broadcasts them)
  affine: _Affine | None = None  # a conv / dense output still open to folding


def _same_dim(a, b) -> bool:
  if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
    return int(a) == int(b)
  return str(a) == str(b)


def _is_static(shape) -> bool:
  return all(isinstance(d, (int, np.integer)) for d in shape)


# Equations computed here when all operands are known, with numpy (binding jax primitives one by
# one would compile a program for each).
_NUMPY_BINARY = {'add': np.add, 'sub': np.subtract, 'mul': np.multiply, 'div': np.divide,
                 'max': np.maximum, 'min': np.minimum, 'pow': np.power, 'eq': np.equal,
                 'ne': np.not_equal, 'lt': np.less, 'gt': np.greater, 'le': np.less_equal,
                 'ge': np.greater_equal, 'and': np.logical_and, 'or': np.logical_or}
_NUMPY_UNARY = {'neg': np.negative, 'exp': np.exp, 'log': np.log, 'tanh': np.tanh,
                'sqrt': np.sqrt, 'rsqrt': lambda x: 1 / np.sqrt(x), 'abs': np.abs,
                'logistic': lambda x: 1 / (1 + np.exp(-x)), 'sign': np.sign,
                'floor': np.floor, 'ceil': np.ceil, 'log1p': np.log1p, 'expm1': np.expm1}
_ONNX_BINARY = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max',
                'min': 'Min', 'pow': 'Pow', 'eq': 'Equal', 'ne': 'Equal', 'lt': 'Less',
                'gt': 'Greater', 'le': 'LessOrEqual', 'ge': 'GreaterOrEqual', 'and': 'And',
                'or': 'Or'}
_ONNX_UNARY = {'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'tanh': 'Tanh', 'sqrt': 'Sqrt',
               'abs': 'Abs', 'logistic': 'Sigmoid', 'sign': 'Sign', 'floor': 'Floor',
               'ceil': 'Ceil', 'erf': 'Erf'}
_IDENTITY = frozenset('copy copy_p reduce_precision optimization_barrier'.split())


class _Converter:
  """Walks a jaxpr (inlining calls) and writes ONNX nodes."""

  def __init__(self):
    self.onnx = _onnx()
    self.nodes = []
    self.initializers = []
    self._names = 0
    self._transposed: dict[tuple[str, bool], str] = {}

  # Graph building.

  def fresh(self, hint: str) -> str:
    self._names += 1
    return f'{hint}_{self._names}'

  def node(self, op: str, inputs: Sequence[str], **attributes) -> str:
    return self.nodes_with_outputs(op, inputs, 1, **attributes)[0]

  def nodes_with_outputs(self, op: str, inputs: Sequence[str], count: int, **attributes
                         ) -> list[str]:
    """A node of ``count`` outputs (``Split``); their names."""
    outs = [self.fresh(op.lower()) for _ in range(count)]
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outs, name=outs[0],
                                                 **attributes))
    return outs

  def constant(self, array, dtype=None) -> str:
    array = np.asarray(array, dtype)
    if array.dtype == np.float64:
      array = array.astype(np.float32)
    name = self.fresh('const')
    self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
    return name

  def int64s(self, values) -> str:
    return self.constant(np.asarray(values, np.int64))

  def materialize(self, value: _Value) -> None:
    """Writes an open convolution or dense layer."""
    affine = value.affine
    if affine is None:
      return
    inputs = [affine.x, self.constant(affine.weight), self.constant(affine.bias)]
    value.name = self.node(affine.op, inputs, **affine.attributes)
    value.affine = None

  def tensor(self, value: _Value, nchw: bool) -> str:
    """``value``'s graph tensor, NCHW if asked and it is rank 4, JAX's order otherwise."""
    nchw = nchw and value.ndim == 4
    if value.const is not None:
      array = value.const
      if nchw:
        array = np.transpose(array, _TO_NCHW)
      return self.constant(array)
    self.materialize(value)
    if value.ndim != 4 or value.nchw == nchw:
      return value.name
    key = (value.name, nchw)
    if key not in self._transposed:
      self._transposed[key] = self.node('Transpose', [value.name],
                                        perm=list(_TO_NCHW if nchw else _TO_NHWC))
    return self._transposed[key]

  # The walk.

  def run(self, jaxpr, consts, args: Sequence[_Value]) -> list[_Value]:
    values: dict[Any, _Value] = {}
    uses: dict[Any, int] = {}
    for eqn in jaxpr.eqns:
      for v in eqn.invars:
        if not isinstance(v, jcore.Literal):
          uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
      if not isinstance(v, jcore.Literal):
        uses[v] = uses.get(v, 0) + 1

    def read(v) -> _Value:
      if isinstance(v, jcore.Literal):
        return _Value(np.ndim(v.val), const=np.asarray(v.val))
      return values[v]

    for v, c in zip(jaxpr.constvars, consts):
      values[v] = _Value(np.ndim(c), const=np.asarray(c))
    for v, a in zip(jaxpr.invars, args):
      values[v] = a
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      name = eqn.primitive.name
      sub = tracing_labels.sub_jaxpr(eqn) if name in tracing_rules.CALLS else None
      if sub is not None:
        sub_jaxpr, sub_consts = sub
        args_in = ins[len(ins) - len(sub_jaxpr.invars):]
        for v, a in zip(eqn.invars[len(ins) - len(sub_jaxpr.invars):], args_in):
          if not isinstance(v, jcore.Literal) and uses.get(v, 0) > 1:
            self.materialize(a)  # shared: folded on neither side
        outs = self.run(sub_jaxpr, sub_consts, args_in)
      else:
        single_use = [not isinstance(v, jcore.Literal) and uses.get(v, 0) == 1
                      for v in eqn.invars]
        out = self.equation(eqn, ins, single_use)
        outs = out if isinstance(out, list) else [out]
      for v, out in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          values[v] = out
    return [read(v) for v in jaxpr.outvars]

  def equation(self, eqn, ins: list[_Value], single_use: list[bool]
               ) -> _Value | list[_Value]:
    """The equation's result (its results: a list, for ``split``)."""
    name = eqn.primitive.name
    out_aval = eqn.outvars[0].aval
    if name == 'split':
      return self._split(eqn, ins[0])
    if eqn.primitive.multiple_results:
      raise ConversionError(f'the primitive {name!r} (several results) has no ONNX translation')
    if all(v.const is not None for v in ins):
      folded = self.fold(eqn, ins)
      if folded is not None:
        return folded
    handler = getattr(self, f'_{name}', None)
    if name in _ONNX_BINARY:
      return self.binary(eqn, ins, single_use)
    if name in _ONNX_UNARY:
      return self.unary(_ONNX_UNARY[name], ins[0])
    if name in _IDENTITY:
      return ins[0]
    if handler is None:
      raise ConversionError(
          f'the primitive {name!r} (output {out_aval.str_short()}) has no ONNX translation; '
          f'supported: {sorted(self.supported())}')
    return handler(eqn, *ins)

  @classmethod
  def supported(cls) -> set[str]:
    own = {n[1:] for n in dir(cls) if n.startswith('_') and not n.startswith('__')
           and n[1:] in _HANDLED}
    return own | set(_ONNX_BINARY) | set(_ONNX_UNARY) | _IDENTITY

  def fold(self, eqn, ins: list[_Value]) -> _Value | None:
    """The equation computed here, or None where its result would be large (a broadcast to the
    batch's shape stays a broadcast)."""
    name = eqn.primitive.name
    params = eqn.params
    args = [v.const for v in ins]
    shape = eqn.outvars[0].aval.shape
    if name == 'broadcast_in_dim':
      kept = np.reshape(args[0], _keep_dims(np.shape(args[0]), params['shape'],
                                            params['broadcast_dimensions']))
      return _Value(len(shape), const=kept, partial=kept.shape != tuple(shape))
    if any(v.partial for v in ins) and name not in _NUMPY_BINARY and name not in _NUMPY_UNARY:
      if not _is_static(shape):
        return None
      args = [np.broadcast_to(a, s.aval.shape) for a, s in zip(args, eqn.invars)]
    if name in _NUMPY_BINARY:
      result = _NUMPY_BINARY[name](*args)
    elif name in _NUMPY_UNARY:
      result = _NUMPY_UNARY[name](args[0])
    elif name == 'integer_pow':
      result = args[0] ** params['y']
    elif name == 'square':
      result = args[0] * args[0]
    elif name in _IDENTITY:
      result = args[0]
    elif name == 'convert_element_type':
      result = np.asarray(args[0]).astype(params['new_dtype'])
    elif not _is_static(shape):
      return None
    else:
      result = np.asarray(eqn.primitive.bind(*args, **params))
    result = np.asarray(result)
    if name != 'convert_element_type' and result.dtype != eqn.outvars[0].aval.dtype:
      result = result.astype(eqn.outvars[0].aval.dtype)
    return _Value(len(shape), const=result,
                  partial=any(v.partial for v in ins) and result.shape != tuple(shape))

  # Elementwise.

  def binary(self, eqn, ins: list[_Value], single_use: list[bool]) -> _Value:
    name = eqn.primitive.name
    a, b = ins
    folded = self.fold_affine(name, a, b, single_use[0], first=True)
    if folded is None:
      folded = self.fold_affine(name, b, a, single_use[1], first=False)
    if folded is not None:
      return folded
    ndim = len(eqn.outvars[0].aval.shape)
    nchw = ndim == 4 and any(v.nchw
                             for v in ins if v.const is None)
    if name == 'max' and b.const is not None and b.const.size == 1 and float(b.const) == 0.0:
      return _Value(ndim, self.node('Relu', [self.tensor(a, nchw)]), nchw=nchw,
                    partial=a.partial)
    out = self.node(_ONNX_BINARY[name], [self.tensor(a, nchw), self.tensor(b, nchw)])
    if name == 'ne':
      out = self.node('Not', [out])
    return _Value(ndim, out, nchw=nchw, partial=a.partial and b.partial)

  def _select_n(self, eqn, which, *cases):
    """``cases[which]`` elementwise, for a boolean ``which`` (two cases)."""
    if len(cases) != 2 or np.dtype(eqn.invars[0].aval.dtype) != np.bool_:
      raise ConversionError('select_n with more than two cases or an integer selector')
    ndim = eqn.outvars[0].aval.ndim
    values = (which,) + cases
    nchw = ndim == 4 and any(v.nchw for v in values if v.const is None)
    out = self.node('Where', [self.tensor(which, nchw), self.tensor(cases[1], nchw),
                              self.tensor(cases[0], nchw)])
    return _Value(ndim, out, nchw=nchw, partial=all(v.partial for v in values))

  def _not(self, eqn, x):
    del eqn
    return _Value(x.ndim, self.node('Not', [self.tensor(x, x.nchw)]), nchw=x.nchw,
                  partial=x.partial)

  def fold_affine(self, name: str, layer: _Value, other: _Value, single_use: bool,
                  first: bool) -> _Value | None:
    """``layer op other`` as the same layer with new weights, when ``layer`` is an open conv
    or dense layer used only here and ``other`` a constant per output channel."""
    affine = layer.affine
    if affine is None or not single_use or other.const is None or name not in (
        'add', 'sub', 'mul', 'div'):
      return None
    if name == 'div' and not first:
      return None
    channels = affine.weight.shape[0]
    c = np.asarray(other.const, np.float64)
    if c.size != 1 and not (c.shape[-1] == channels and c.size == channels):
      return None
    c = np.broadcast_to(c.reshape(-1), (channels,))
    weight = affine.weight.astype(np.float64)
    bias = affine.bias.astype(np.float64)
    scale = c.reshape((channels,) + (1,) * (weight.ndim - 1))
    if name == 'add':
      bias = bias + c
    elif name == 'sub' and first:
      bias = bias - c
    elif name == 'sub':  # c - layer
      weight, bias = -weight, c - bias
    elif name == 'mul':
      weight, bias = weight * scale, bias * c
    else:  # layer / c
      weight, bias = weight / scale, bias / c
    dtype = affine.weight.dtype
    return _Value(layer.ndim, affine=dataclasses.replace(
        affine, weight=weight.astype(dtype), bias=bias.astype(dtype)), nchw=layer.nchw)

  def unary(self, op: str, x: _Value) -> _Value:
    out = self.node(op, [self.tensor(x, x.nchw)])
    return _Value(x.ndim, out, nchw=x.ndim == 4 and x.nchw,
                  partial=x.partial)

  def _rsqrt(self, eqn, x):
    del eqn
    root = self.unary('Sqrt', x)
    return self.unary('Reciprocal', root)

  def _log1p(self, eqn, x):
    del eqn
    t = self.tensor(x, x.nchw)
    out = self.node('Log', [self.node('Add', [t, self.constant(np.float32(1))])])
    return _Value(x.ndim, out, nchw=x.nchw, partial=x.partial)

  def _expm1(self, eqn, x):
    del eqn
    t = self.tensor(x, x.nchw)
    out = self.node('Sub', [self.node('Exp', [t]), self.constant(np.float32(1))])
    return _Value(x.ndim, out, nchw=x.nchw, partial=x.partial)

  def _power(self, x: _Value, y) -> _Value:
    t = self.tensor(x, x.nchw)
    out = self.node('Mul', [t, t]) if y == 2 else self.node(
        'Pow', [t, self.constant(np.float32(y))])
    return _Value(x.ndim, out, nchw=x.nchw, partial=x.partial)

  def _integer_pow(self, eqn, x):
    return self._power(x, eqn.params['y'])

  def _square(self, eqn, x):
    del eqn
    return self._power(x, 2)

  def _clamp(self, eqn, low, x, high):
    del eqn
    if low.const is None or high.const is None or low.const.size != 1 or high.const.size != 1:
      raise ConversionError('clamp with computed bounds has no ONNX translation')
    nchw = x.ndim == 4 and x.nchw
    out = self.node('Clip', [self.tensor(x, nchw), self.constant(low.const.reshape(())),
                             self.constant(high.const.reshape(()))])
    return _Value(x.ndim, out, nchw=nchw, partial=x.partial)

  def _convert_element_type(self, eqn, x):
    dtype = np.dtype(eqn.params['new_dtype'])
    if dtype == np.float32:
      return x
    onnx = self.onnx
    to = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    nchw = x.ndim == 4 and x.nchw
    return _Value(x.ndim, self.node('Cast', [self.tensor(x, nchw)], to=to), nchw=nchw,
                  partial=x.partial)

  # Layers.

  def _conv_general_dilated(self, eqn, x, kernel):
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
    where = f'convolution {eqn.outvars[0].aval.str_short()}'
    if tuple(lhs_spec) != _TO_NCHW or tuple(out_spec) != _TO_NCHW:
      raise ConversionError(f'{where}: only 2-D convolutions on NHWC images are translated '
                            f'(dimension numbers {p["dimension_numbers"]})')
    if kernel.const is None:
      raise ConversionError(f'{where}: its kernel is computed from the images')
    if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
      raise ConversionError(f'{where}: input dilation (a transposed convolution) or batch '
                            'groups have no translation')
    padding = [tuple(pair) for pair in p['padding']]
    if any(lo < 0 or hi < 0 for lo, hi in padding):
      raise ConversionError(f'{where}: negative padding {padding}')
    weight = np.transpose(np.broadcast_to(kernel.const, eqn.invars[1].aval.shape), rhs_spec)
    attributes = dict(kernel_shape=list(weight.shape[2:]), strides=list(p['window_strides']),
                      dilations=list(p['rhs_dilation']), group=int(p['feature_group_count']),
                      pads=[lo for lo, _ in padding] + [hi for _, hi in padding])
    bias = np.zeros(weight.shape[0], weight.dtype)
    return _Value(4, affine=_Affine('Conv', self.tensor(x, True), weight, bias, attributes),
                  nchw=True)

  def _dot_general(self, eqn, x, w):
    (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
    where = f'matrix product {eqn.outvars[0].aval.str_short()}'
    if lb or rb or w.const is None or w.ndim != 2 or len(lc) != 1 or lc[0] != x.ndim - 1:
      raise ConversionError(f'{where}: only an input times a weight matrix is translated '
                            f'(dimension numbers {eqn.params["dimension_numbers"]})')
    weight = np.asarray(w.const)
    weight = weight.T if rc[0] == 0 else weight  # [out, in]
    if x.ndim == 2:
      bias = np.zeros(weight.shape[0], weight.dtype)
      return _Value(2, affine=_Affine('Gemm', self.tensor(x, False), weight, bias,
                                      dict(transB=1)))
    out = self.node('MatMul', [self.tensor(x, False), self.constant(weight.T)])
    return _Value(eqn.outvars[0].aval.ndim, out)

  # Shapes.

  def _plain_or_mapped_axes(self, x: _Value, axes: Sequence[int]):
    """The axes of ``x``'s tensor for JAX's ``axes``, reading ``x`` NCHW where the remaining
    axes keep JAX's order, and ``x``'s tensor."""
    if x.ndim == 4 and x.nchw:
      remaining = [a for a in _TO_NCHW if a not in axes]
      if remaining == sorted(remaining):
        return self.tensor(x, True), [_NCHW_POSITION[a] for a in axes]
    return self.tensor(x, False), list(axes)

  def _reduce(self, op: str, eqn, x):
    if x.partial:
      raise ConversionError(f'{op} of a broadcast value')
    tensor, axes = self._plain_or_mapped_axes(x, eqn.params['axes'])
    if op == 'ReduceSum':
      out = self.node(op, [tensor, self.int64s(axes)], keepdims=0)
    else:
      out = self.node(op, [tensor], axes=axes, keepdims=0)
    return _Value(eqn.outvars[0].aval.ndim, out)

  def _reduce_sum(self, eqn, x):
    return self._reduce('ReduceSum', eqn, x)

  def _reduce_max(self, eqn, x):
    return self._reduce('ReduceMax', eqn, x)

  def _reduce_min(self, eqn, x):
    return self._reduce('ReduceMin', eqn, x)

  def _squeeze(self, eqn, x):
    tensor, axes = self._plain_or_mapped_axes(x, eqn.params['dimensions'])
    return _Value(eqn.outvars[0].aval.ndim, self.node('Squeeze', [tensor, self.int64s(axes)]))

  def _reshape(self, eqn, x):
    if x.partial:
      raise ConversionError('reshape of a broadcast value')
    if eqn.params.get('dimensions') is not None:
      raise ConversionError('reshape with a dimension order')
    in_shape = eqn.invars[0].aval.shape
    sizes = []
    for i, size in enumerate(eqn.params['new_sizes']):
      if isinstance(size, (int, np.integer)):
        sizes.append(int(size))
      elif i == 0 and in_shape and _same_dim(in_shape[0], size):
        sizes.append(0)  # the batch, copied from the input
      elif -1 not in sizes:
        sizes.append(-1)
      else:
        raise ConversionError(f'reshape to {eqn.params["new_sizes"]}: two free sizes')
    out = self.node('Reshape', [self.tensor(x, False), self.int64s(sizes)])
    return _Value(len(sizes), out)

  def _broadcast_in_dim(self, eqn, x):
    shape = eqn.params['shape']
    dims = tuple(eqn.params['broadcast_dimensions'])
    in_shape = eqn.invars[0].aval.shape
    kept = _keep_dims(in_shape, shape, dims)
    partial = x.partial or not all(_same_dim(k, s) for k, s in zip(kept, shape))
    if len(dims) == len(shape):
      return dataclasses.replace(x, partial=partial)
    new_axes = [d for d in range(len(shape)) if d not in dims]
    if len(shape) == 4 and x.ndim == 2 and dims == (0, 3):  # [N, C] -> NCHW [N, C, 1, 1]
      out = self.node('Unsqueeze', [self.tensor(x, False), self.int64s([2, 3])])
      return _Value(4, out, nchw=True, partial=partial)
    out = self.node('Unsqueeze', [self.tensor(x, False), self.int64s(new_axes)])
    return _Value(len(shape), out, partial=partial)

  def _transpose(self, eqn, x):
    perm = list(eqn.params['permutation'])
    tensor = self.tensor(x, False)
    return _Value(len(perm), self.node('Transpose', [tensor], perm=perm), partial=x.partial)

  def _concatenate(self, eqn, *xs):
    if any(x.partial for x in xs):
      raise ConversionError('concatenation of a broadcast value')
    axis = eqn.params['dimension']
    ndim = eqn.outvars[0].aval.ndim
    nchw = ndim == 4 and any(x.nchw for x in xs if x.const is None)
    onnx_axis = _NCHW_POSITION[axis] if nchw else axis
    out = self.node('Concat', [self.tensor(x, nchw) for x in xs], axis=onnx_axis)
    return _Value(ndim, out, nchw=nchw)

  def _split(self, eqn, x) -> list[_Value]:
    if x.partial:
      raise ConversionError('split of a broadcast value')
    axis = eqn.params['axis']
    nchw = x.ndim == 4 and x.nchw and x.const is None
    sizes = [int(s) for s in eqn.params['sizes']]
    outs = self.nodes_with_outputs('Split', [self.tensor(x, nchw), self.int64s(sizes)],
                                   len(sizes), axis=_NCHW_POSITION[axis] if nchw else axis)
    return [_Value(x.ndim, out, nchw=nchw) for out in outs]

  def _slice(self, eqn, x):
    p = eqn.params
    in_shape = eqn.invars[0].aval.shape
    strides = p['strides'] or (1,) * len(in_shape)
    axes = [i for i, (start, limit, stride, n) in enumerate(
        zip(p['start_indices'], p['limit_indices'], strides, in_shape))
            if not (start == 0 and _same_dim(limit, n) and stride == 1)]
    nchw = x.ndim == 4 and x.nchw
    tensor = self.tensor(x, nchw)
    if not axes:
      return x
    if any(not isinstance(p['limit_indices'][a], (int, np.integer)) for a in axes):
      raise ConversionError(f'slice along the batch axis: {p}')
    onnx_axes = [_NCHW_POSITION[a] if nchw else a for a in axes]
    out = self.node('Slice', [tensor, self.int64s([p['start_indices'][a] for a in axes]),
                              self.int64s([p['limit_indices'][a] for a in axes]),
                              self.int64s(onnx_axes), self.int64s([strides[a] for a in axes])])
    return _Value(x.ndim, out, nchw=nchw)

  def _pad(self, eqn, x, fill):
    config = eqn.params['padding_config']
    if fill.const is None or any(interior for _, _, interior in config) or any(
        lo < 0 or hi < 0 for lo, hi, _ in config):
      raise ConversionError(f'pad {config} with a computed value, interior or negative padding')
    nchw = x.ndim == 4 and x.nchw
    order = _TO_NCHW if nchw else range(x.ndim)
    pads = [config[a][0] for a in order] + [config[a][1] for a in order]
    out = self.node('Pad', [self.tensor(x, nchw), self.int64s(pads),
                            self.constant(np.asarray(fill.const, np.float32).reshape(()))])
    return _Value(x.ndim, out, nchw=nchw)

  def _pool(self, op: str, eqn, x):
    p = eqn.params
    window, strides = p['window_dimensions'], p['window_strides']
    if (x.ndim != 4 or window[0] != 1 or window[3] != 1 or strides[0] != 1 or strides[3] != 1
        or any(d != 1 for d in p['base_dilation']) or any(d != 1 for d in p['window_dilation'])
        or tuple(p['padding'][0]) != (0, 0) or tuple(p['padding'][3]) != (0, 0)):
      raise ConversionError(f'{eqn.primitive.name}: only spatial windows without dilation are '
                            f'translated ({p})')
    pads = [p['padding'][1][0], p['padding'][2][0], p['padding'][1][1], p['padding'][2][1]]
    attributes = dict(kernel_shape=[window[1], window[2]], strides=[strides[1], strides[2]],
                      pads=pads)
    if op == 'AveragePool':
      attributes['count_include_pad'] = 1
    out = self.node(op, [self.tensor(x, True)], **attributes)
    if op == 'AveragePool':  # JAX sums the window; the average times its size
      out = self.node('Mul', [out, self.constant(np.float32(window[1] * window[2]))])
    return _Value(4, out, nchw=True)

  def _reduce_window_max(self, eqn, x):
    return self._pool('MaxPool', eqn, x)

  def _reduce_window_sum(self, eqn, x):
    return self._pool('AveragePool', eqn, x)


_HANDLED = frozenset(
    'select_n not log1p expm1 rsqrt integer_pow square clamp convert_element_type conv_general_dilated dot_general '
    'reduce_sum reduce_max reduce_min squeeze reshape broadcast_in_dim transpose concatenate '
    'slice split pad reduce_window_max reduce_window_sum'.split())


def _keep_dims(in_shape, shape, dims) -> tuple:
  """``in_shape`` placed at ``dims`` of ``shape``'s rank, 1 elsewhere."""
  kept = [1] * len(shape)
  for i, d in enumerate(dims):
    kept[d] = in_shape[i]
  return tuple(kept)


def to_onnx(forward: Callable[[jax.Array], jax.Array], input_shape: Sequence[int],
            name: str = 'slim_network'):
  """The ONNX model of ``forward`` (float32 NHWC images of ``input_shape`` -> logits), its
  weights inside, the batch dimension free."""
  onnx = _onnx()
  batch, = jax.export.symbolic_shape('batch')
  images = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
  closed = jax.make_jaxpr(forward)(images)
  if len(closed.jaxpr.outvars) != 1:
    raise ConversionError(f'the network returns {len(closed.jaxpr.outvars)} arrays; the '
                          'export takes one (the logits)')
  converter = _Converter()
  (logits,) = converter.run(closed.jaxpr, closed.consts, [_Value(4, INPUT_NAME)])
  if logits.const is not None or logits.partial:
    raise ConversionError('the logits do not depend on the images')
  converter.nodes.append(onnx.helper.make_node('Identity', [converter.tensor(logits, False)],
                                               [OUTPUT_NAME], name=OUTPUT_NAME))
  out_aval = closed.jaxpr.outvars[0].aval
  graph = onnx.helper.make_graph(
      converter.nodes, name,
      [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                          ['batch'] + list(input_shape))],
      [onnx.helper.make_tensor_value_info(
          OUTPUT_NAME, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(out_aval.dtype)),
          ['batch'] + [int(d) for d in out_aval.shape[1:]])],
      converter.initializers)
  model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', OPSET)],
                                 producer_name='autoslim_jax')
  model.ir_version = 8  # what onnxruntime releases of the last years read (opset 17)
  onnx.checker.check_model(model)
  return model
