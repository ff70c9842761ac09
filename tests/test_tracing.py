"""Channel units found by tracing plain Flax modules (autoslim_jax/tracing.py).

The zoo's networks are written again here as plain ``flax.linen`` modules (``nn.Conv``,
``nn.BatchNorm``, ``nn.Dense``, no unit names anywhere); tracing them must find the zoo's
hand-declared units and a layer table equal to the zoo's, so resources agree for every config.
Then the cases on which the PyTorch tracers are known to fail, and the refusals. Everything is
shape-only tracing: nothing compiles.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoslim_jax import plain_network
from autoslim_jax import tracing
from autoslim_jax.channels import make_divisible
from autoslim_jax.models import mobilenet_v1, mobilenet_v2, resnet50
from autoslim_jax.resources import ResourceModel
from conftest import backend_compiles

# ----------------------------------------------------------------------------------------------
# The zoo's networks as plain modules. Layer modules are named as the zoo's (a conv-BN-activation
# block 'name' holding 'conv' and 'bn'), so their variables trees are the zoo supernets'.


class ConvBN(nn.Module):
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  activation: Callable | None = nn.relu

  @nn.compact
  def __call__(self, x, train=False):
    pad = (self.kernel_size - 1) // 2
    x = nn.Conv(self.features, (self.kernel_size,) * 2, strides=self.strides,
                padding=((pad, pad), (pad, pad)),
                feature_group_count=x.shape[-1] if self.depthwise else 1, use_bias=False,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    return x if self.activation is None else self.activation(x)


# MobileNet v2: (expansion, channels, blocks, first stride) per stage; CIFAR layout (stage 2 at
# stride 1).
MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))


class PlainInvertedResidual(nn.Module):
  hidden: int
  out: int
  stride: int
  expand: bool

  @nn.compact
  def __call__(self, x, train=False):
    y = x
    if self.expand:
      y = ConvBN(self.hidden, activation=nn.relu6, name='expand')(y, train)
    y = ConvBN(self.hidden, 3, self.stride, depthwise=True, activation=nn.relu6,
               name='depthwise')(y, train)
    y = ConvBN(self.out, activation=None, name='project')(y, train)
    return x + y if self.stride == 1 and x.shape[-1] == self.out else y


class PlainMobileNetV2(nn.Module):
  width_mult: float = 1.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    channels = make_divisible(32 * self.width_mult)
    x = ConvBN(channels, 3, 1, activation=nn.relu6, name='stem')(x, train)
    index = 0
    for t, c, n, s in MBV2_STAGES:
      out = make_divisible(c * self.width_mult)
      for i in range(n):
        x = PlainInvertedResidual(channels * t, out, s if i == 0 else 1, t != 1,
                                  name=f'block{index}')(x, train)
        channels, index = out, index + 1
    x = ConvBN(make_divisible(1280 * max(1.0, self.width_mult)), activation=nn.relu6,
               name='last')(x, train)
    return nn.Dense(self.num_classes, name='classifier')(jnp.mean(x, axis=(1, 2)))


# ResNet-50 (v1.5, CIFAR layout): (inner width, blocks, first stride) per stage.
RESNET_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


class PlainBottleneck(nn.Module):
  inner: int
  stride: int
  projection: bool

  @nn.compact
  def __call__(self, x, train=False):
    shortcut = x
    if self.projection:
      shortcut = ConvBN(self.out_channels(), 1, self.stride, activation=None,
                        name='projection')(x, train)
    y = ConvBN(self.inner, name='conv1')(x, train)
    y = ConvBN(self.inner, 3, self.stride, name='conv2')(y, train)
    y = ConvBN(self.out_channels(), activation=None, name='conv3')(y, train)
    return nn.relu(y + shortcut)

  def out_channels(self):
    return self.inner * 4


class PlainResNet50(nn.Module):
  width_mult: float = 0.25
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBN(make_divisible(64 * self.width_mult), 3, 1, name='stem')(x, train)
    index = 0
    for inner, blocks, stride in RESNET_STAGES:
      for i in range(blocks):
        x = PlainBottleneck(make_divisible(inner * self.width_mult), stride if i == 0 else 1,
                            i == 0, name=f'block{index}')(x, train)
        index += 1
    return nn.Dense(self.num_classes, name='classifier')(jnp.mean(x, axis=(1, 2)))


MBV1_BLOCKS = ((64, 1), (128, 1), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
               (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))  # CIFAR: block 2 at stride 1


class PlainMobileNetV1(nn.Module):
  width_mult: float = 1.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBN(make_divisible(32 * self.width_mult), 3, activation=nn.relu6, name='stem')(
        x, train)
    for i, (c, stride) in enumerate(MBV1_BLOCKS, start=1):
      x = ConvBN(x.shape[-1], 3, stride, depthwise=True, activation=nn.relu6,
                 name=f'block{i}_depthwise')(x, train)
      x = ConvBN(make_divisible(c * self.width_mult), activation=nn.relu6,
                 name=f'block{i}_pointwise')(x, train)
    return nn.Dense(self.num_classes, name='classifier')(jnp.mean(x, axis=(1, 2)))


def zoo_path(path: Sequence[str]) -> tuple[str, ...]:
  """The zoo's layer path of a plain layer: the zoo records the conv-BN block, not its conv."""
  return tuple(path[:-1]) if path[-1] == 'conv' else tuple(path)


def unit_mapping(traced: tracing.TracedNetwork, network) -> dict[str, str]:
  """Zoo unit -> traced unit, checking that the layer tables agree field by field and that
  the units partition the layers alike (a bijection between the two sets of units)."""
  zoo = network.layers
  assert [zoo_path(r.path) for r in traced.layers] == [r.path for r in zoo]
  mapping = {}
  for z, t in zip(zoo, traced.layers):
    for field in ('kind', 'kernel_size', 'in_channels', 'out_channels', 'out_height',
                  'out_width', 'has_bias', 'batch_norm'):
      assert getattr(t, field) == getattr(z, field), (z.path, field)
    for zoo_unit, unit in ((z.in_unit, t.in_unit), (z.out_unit, t.out_unit)):
      assert (zoo_unit is None) == (unit is None), z.path
      if zoo_unit is not None:
        assert mapping.setdefault(zoo_unit, unit) == unit, (z.path, zoo_unit, unit)
  assert sorted(mapping) == sorted(network.unit_names)
  assert sorted(mapping.values()) == sorted(u.name for u in traced.units)
  for zoo_unit, unit in mapping.items():
    assert traced.max_widths[unit] == network.max_widths[zoo_unit]
  return mapping


def check_resources(traced, network, mapping, configs=20, seed=0):
  """Resources of the traced table equal the zoo's at max width and for random configs."""
  zoo = ResourceModel(network)
  mine = ResourceModel(traced.resource_network())
  rng = np.random.default_rng(seed)
  zoo_units = network.unit_names
  maxes = np.array([network.max_widths[u] for u in zoo_units])
  matrix = np.concatenate([maxes[None], rng.integers(1, maxes + 1, (configs, len(maxes)))])
  order = [zoo_units.index(next(z for z in zoo_units if mapping[z] == u.name))
           for u in traced.units]
  expected, got = zoo.batch(matrix), mine.batch(matrix[:, order])
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


ZOO_CASES = {
    'mobilenet_v2': (lambda: PlainMobileNetV2(1.0),
                     lambda: mobilenet_v2(1.0, layout='cifar'), 25),
    'resnet50': (lambda: PlainResNet50(0.25), lambda: resnet50(0.25, layout='cifar'), 37),
    'mobilenet_v1': (lambda: PlainMobileNetV1(1.0),
                     lambda: mobilenet_v1(1.0, layout='cifar'), 14),
}


@pytest.mark.parametrize('name', sorted(ZOO_CASES))
def test_zoo_networks_as_plain_modules(name):
  plain, zoo, count = ZOO_CASES[name]
  network = zoo()
  before = backend_compiles()
  traced = tracing.trace_network(plain(), network.input_shape)
  assert backend_compiles() == before, 'tracing compiled something'
  assert len(traced.units) == count
  mapping = unit_mapping(traced, network)
  check_resources(traced, network, mapping)
  assert traced.logits_index is None and not traced.input_segments


def test_unit_controls_every_variable_slice():
  """A MobileNet v2 unit controls its producers' kernel outputs, BatchNorm scale, bias, mean
  and variance, the depthwise kernel and the consumers' kernel inputs: the slices an export
  takes."""
  traced = tracing.trace_network(PlainMobileNetV2(1.0), (32, 32, 3))
  unit = next(u for u in traced.units if u.name == 'block1/expand/conv')
  got = {(p.path, p.axis, p.start, p.stop) for p in unit.params}
  width = unit.width
  expected = {(('params', 'block1', 'expand', 'conv', 'kernel'), 3, 0, width),
              (('params', 'block1', 'depthwise', 'conv', 'kernel'), 3, 0, width),
              (('params', 'block1', 'project', 'conv', 'kernel'), 2, 0, width)}
  for block in ('expand', 'depthwise'):
    expected |= {(('params', 'block1', block, 'bn', v), 0, 0, width) for v in ('scale', 'bias')}
    expected |= {(('batch_stats', 'block1', block, 'bn', v), 0, 0, width) for v in ('mean', 'var')}
  assert got == expected
  stream = next(u for u in traced.units if u.name == 'block1/project/conv')
  assert stream.producers == (('block1', 'project', 'conv'), ('block2', 'project', 'conv'))


# ----------------------------------------------------------------------------------------------
# The PyTorch tracers' known failure cases.


class ConcatTwice(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='a')(x))
    y = jnp.concatenate([x, x], axis=-1)
    y = nn.BatchNorm(use_running_average=True, name='bn')(y)
    y = nn.Conv(12, (1, 1), name='b')(y)
    return nn.Dense(5, name='head')(jnp.mean(y, axis=(1, 2)))


def test_tensor_concatenated_twice():
  traced = tracing.trace_network(ConcatTwice(), (8, 8, 3))
  assert [u.name for u in traced.units] == ['a', 'b']
  assert traced.input_segments == {('b',): (('a', 8), ('a', 8))}
  a = traced.units[0]
  assert {(p.path, p.axis, p.start, p.stop) for p in a.params if p.path[1] in ('b', 'bn')} == {
      (('params', 'b', 'kernel'), 2, 0, 8), (('params', 'b', 'kernel'), 2, 8, 16),
      (('params', 'bn', 'scale'), 0, 0, 8), (('params', 'bn', 'scale'), 0, 8, 16),
      (('params', 'bn', 'bias'), 0, 0, 8), (('params', 'bn', 'bias'), 0, 8, 16),
      (('batch_stats', 'bn', 'mean'), 0, 0, 8), (('batch_stats', 'bn', 'mean'), 0, 8, 16),
      (('batch_stats', 'bn', 'var'), 0, 0, 8), (('batch_stats', 'bn', 'var'), 0, 8, 16)}


class ConcatSources(nn.Module):
  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(8, (3, 3), name='a')(x))
    b = nn.relu(nn.Conv(16, (3, 3), name='b')(a))
    c = nn.Conv(4, (1, 1), name='c')(x)
    y = jnp.concatenate([a, jnp.concatenate([b, c], axis=-1)], axis=-1)  # nested, too
    y = nn.Conv(24, (3, 3), name='d')(y) + nn.Conv(24, (1, 1), name='e')(y)
    return nn.Dense(5, name='head')(jnp.mean(y, axis=(1, 2)))


def test_concatenation_of_different_sources_then_conv():
  traced = tracing.trace_network(ConcatSources(), (8, 8, 3))
  assert [u.name for u in traced.units] == ['a', 'b', 'c', 'd']
  assert traced.units[3].producers == (('d',), ('e',))
  segments = (('a', 8), ('b', 16), ('c', 4))
  assert traced.input_segments == {('d',): segments, ('e',): segments}
  d = next(r for r in traced.layers if r.path == ('d',))
  assert (d.in_unit, d.in_channels, d.out_unit) == (None, 28, 'd')


class OneChannelInput(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='first')(x))  # 1 input channel, 1 group: plain
    x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=8, name='dw')(x))
    x = nn.Conv(1, (1, 1), name='to_one')(x)  # one channel: a fixed size
    x = nn.Conv(4, (3, 3), name='from_one')(x)
    return nn.Dense(3, name='head')(jnp.mean(x, axis=(1, 2)))


def test_conv_with_one_input_channel_is_not_depthwise():
  traced = tracing.trace_network(OneChannelInput(), (8, 8, 1))
  kinds = {r.path[0]: (r.kind, r.in_unit, r.out_unit) for r in traced.layers}
  assert kinds == {'first': ('conv', None, 'first'), 'dw': ('depthwise', 'first', 'first'),
                   'to_one': ('conv', 'first', None), 'from_one': ('conv', None, 'from_one'),
                   'head': ('dense', 'from_one', None)}


class TupleOutput(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBN(8, 3, name='a')(x, train)
    features = ConvBN(16, 1, name='b')(x, train)
    pooled = jnp.mean(features, axis=(1, 2))
    return nn.Dense(10, name='head')(pooled), pooled


class DictOutput(nn.Module):
  @nn.compact
  def __call__(self, x):
    return {'logits': nn.Dense(10)(jnp.mean(nn.Conv(8, (3, 3))(x), axis=(1, 2)))}


def test_tuple_output_logits_first():
  """The logits are the first element; the other outputs are fixed too (callers read them at
  every config), so the unit feeding them is pinned."""
  traced = tracing.trace_network(TupleOutput(), (8, 8, 3))
  assert traced.logits_index == 0
  assert [u.name for u in traced.units] == ['a/conv']
  assert [(r.path, r.out_unit) for r in traced.layers] == [
      (('a', 'conv'), 'a/conv'), (('b', 'conv'), None), (('head',), None)]
  with pytest.raises(tracing.TracingError, match='returns dict'):
    tracing.trace_network(DictOutput(), (8, 8, 3))


class SqueezeExcite(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (1, 1), name='expand')(x))
    x = nn.relu(nn.Conv(16, (3, 3), feature_group_count=16, name='dw')(x))
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Conv(4, (1, 1), name='se_reduce')(s))
    s = nn.sigmoid(nn.Conv(16, (1, 1), name='se_expand')(s))
    x = nn.Conv(8, (1, 1), name='project')(x * s)
    return nn.Dense(3, name='head')(jnp.mean(x, axis=(1, 2)))


def test_squeeze_excite_gate_shares_the_unit():
  traced = tracing.trace_network(SqueezeExcite(), (8, 8, 3))
  assert {u.name: u.producers for u in traced.units} == {
      'expand': (('expand',), ('se_expand',)), 'se_reduce': (('se_reduce',),),
      'project': (('project',),)}
  se = next(r for r in traced.layers if r.path == ('se_reduce',))
  assert (se.in_unit, se.out_unit, se.out_height, se.out_width) == ('expand', 'se_reduce', 1, 1)


class GlobalPoolFlatten(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.Conv(8, (3, 3), name='a')(x), (8, 8))  # 1x1: flattening is harmless
    return nn.Dense(3, name='head')(x.reshape(x.shape[0], -1))


def test_flatten_of_a_pooled_map_is_accepted():
  traced = tracing.trace_network(GlobalPoolFlatten(), (8, 8, 3))
  assert [(r.path, r.in_unit, r.out_unit) for r in traced.layers] == [
      (('a',), None, 'a'), (('head',), 'a', None)]


# ----------------------------------------------------------------------------------------------
# Refusals: each names the layer (or the op's module) and the reason.


def conv_then(op: Callable[[jax.Array], jax.Array], name: str) -> nn.Module:
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = op(nn.relu(nn.Conv(8, (3, 3), name='conv')(x)))
      return nn.Dense(3, name='head')(jnp.mean(x.reshape(x.shape[0], -1, 8), axis=1))
  Net.__name__ = name
  return Net()


REFUSALS = {
    'layer_norm': (lambda x: nn.LayerNorm(name='norm')(x),
                   r"Net/norm: .* reduces over the channel axis of unit 'conv'"),
    'group_norm': (lambda x: nn.GroupNorm(num_groups=2, name='norm')(x),
                   r"Net/norm: reshape .* reshapes \(merges or splits\) the channel axis of "
                   r"unit 'conv'"),
    'mean_over_channels': (lambda x: x * jnp.mean(x, axis=-1, keepdims=True),
                           r"Net: reduce_sum .*test_tracing.py.* reduces over the channel axis"),
}


@pytest.mark.parametrize('name', sorted(REFUSALS))
def test_normalisation_over_channels_is_refused(name):
  op, message = REFUSALS[name]
  with pytest.raises(tracing.TracingError, match=message):
    tracing.trace_network(conv_then(op, 'Net'), (8, 8, 3))


class FlattenMixing(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name='conv')(x))
    return nn.Dense(3, name='head')(x.reshape(x.shape[0], -1))  # (4 * 4 * 8) features


def test_flatten_mixing_channels_is_refused():
  with pytest.raises(tracing.TracingError,
                     match=r"FlattenMixing: reshape at .*test_tracing.py.* unit 'conv'"):
    tracing.trace_network(FlattenMixing(), (8, 8, 3))


class Grouped(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), name='conv')(x)
    x = nn.Conv(8, (3, 3), feature_group_count=2, name='grouped')(x)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_grouped_conv_is_refused():
  with pytest.raises(tracing.TracingError,
                     match=r'layer grouped: grouped conv \(feature_group_count=2'):
    tracing.trace_network(Grouped(), (8, 8, 3))


class AddToConcat(nn.Module):
  @nn.compact
  def __call__(self, x):
    a = nn.Conv(8, (1, 1), name='a')(x)
    b = nn.Conv(8, (1, 1), name='b')(x)
    y = jnp.concatenate([a, b], -1) + nn.Conv(16, (1, 1), name='c')(x)
    return nn.Dense(3)(jnp.mean(y, axis=(1, 2)))


def test_layer_added_to_a_concatenation_writes_its_segments():
  """``c`` is added to the concatenation of ``a`` and ``b``: its first 8 channels join unit a,
  its last 8 unit b (before: refused), and its record's output is those segments."""
  traced = tracing.trace_network(AddToConcat(), (8, 8, 3))
  assert {u.name: u.producers for u in traced.units} == {
      'a': (('a',), ('c',)), 'b': (('b',), ('c',))}
  assert dict(traced.output_segments) == {('c',): (('a', 8), ('b', 8))}
  record = {r.path: r for r in traced.layers}[('c',)]
  assert (record.out_unit, record.out_channels) == (None, 16)
  c_kernel = [(u.name, p.start, p.stop) for u in traced.units for p in u.params
              if p.path == ('params', 'c', 'kernel')]
  assert c_kernel == [('a', 0, 8), ('b', 8, 16)]
  macs = ResourceModel(traced.resource_network())({'a': 3, 'b': 5})['macs']
  assert macs == 3 * 3 * 64 + 3 * 5 * 64 + 3 * (3 + 5) * 64 + (3 + 5) * 3


class UnknownOp(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (1, 1), name='conv')(x)
    x = jnp.sort(x, axis=-1)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_unknown_primitive_on_a_unit_is_refused():
  with pytest.raises(tracing.TracingError, match="applies sort, which .* unit 'conv'"):
    tracing.trace_network(UnknownOp(), (8, 8, 3))


class BatchCentred(nn.Module):
  """Subtracts the batch's mean in inference mode too: right at the traced batch only."""
  reduce: Callable

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), name='conv')(x))
    x = x - self.reduce(x)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_inference_computing_with_the_batch_size_is_refused():
  """A slim net's exported program is traced at a fixed batch and serves any: a module whose
  inference graph has constants that depend on the batch (a mean over the batch axis) is
  refused as a network, naming the line; one that reduces over other axes is a network."""
  with pytest.raises(tracing.TracingError,
                     match=r"BatchCentred: div at .*test_tracing.py:\d+.* in inference mode this "
                           r"computes with the batch size \(2.0 for a batch of 2, 3.0 for 3"):
    plain_network.PlainNetwork('centred', BatchCentred(lambda x: jnp.mean(x, axis=0)),
                               (8, 8, 3))
  network = plain_network.PlainNetwork(
      'centred', BatchCentred(lambda x: jnp.mean(x, axis=(1, 2), keepdims=True)), (8, 8, 3))
  assert list(network.channel_space().max_config()) == ['conv']


class ChannelsAsSpatial(nn.Module):
  transposed_conv: bool

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='conv')(x))  # 8 x 8 x 8: a transpose keeps the shape
    if self.transposed_conv:
      x = nn.Conv(4, (3, 3), name='over_channels')(jnp.swapaxes(x, 2, 3))
    else:
      x = x + jnp.swapaxes(x, 2, 3)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_channels_used_as_a_spatial_axis_are_refused():
  with pytest.raises(tracing.TracingError,
                     match=r"ChannelsAsSpatial/over_channels: conv_general_dilated .* convolves "
                           r"across .* unit 'conv'"):
    tracing.trace_network(ChannelsAsSpatial(True), (8, 8, 3))
  with pytest.raises(tracing.TracingError,
                     match='layer conv: its output channels meet a spatial axis of conv'):
    tracing.trace_network(ChannelsAsSpatial(False), (8, 8, 3))


@jax.custom_vjp
def clipped_relu(x):
  return jnp.maximum(x, 0.0)


clipped_relu.defvjp(lambda x: (clipped_relu(x), x), lambda x, g: (g * (x > 0),))


class RematBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return clipped_relu(nn.Conv(8, (3, 3), name='conv')(x))


class NestedCalls(nn.Module):
  """Sub-jaxprs of every kind: remat, jit, custom_vjp, custom_jvp (gelu), then a transposed
  conv, SAME max pooling and log-softmax over the (fixed) classes."""

  @nn.compact
  def __call__(self, x):
    x = nn.remat(RematBlock)(name='block')(x)
    x = x + nn.Conv(8, (1, 1), name='side')(jax.jit(lambda a: a * 2.0)(x))
    x = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name='up')(x)
    x = nn.max_pool(nn.gelu(x), (3, 3), strides=(2, 2), padding='SAME')
    return jax.nn.log_softmax(nn.Dense(3, name='head')(jnp.mean(x, axis=(1, 2))))


def test_units_are_followed_through_nested_calls():
  traced = tracing.trace_network(NestedCalls(), (8, 8, 3))
  assert {u.name: u.producers for u in traced.units} == {
      'block/conv': (('block', 'conv'), ('side',)), 'up': (('up',),)}
  assert [(r.path, r.in_unit, r.out_unit, r.out_height) for r in traced.layers] == [
      (('block', 'conv'), None, 'block/conv', 8), (('side',), 'block/conv', 'block/conv', 8),
      (('up',), 'block/conv', 'up', 16), (('head',), 'up', None, 1)]


class Residual(nn.Module):
  shortcut_first: bool

  @nn.compact
  def __call__(self, x):
    r = nn.relu(nn.Conv(8, (3, 3), name='stem')(x))
    y = nn.Conv(8, (3, 3), name='conv')(nn.relu(nn.Conv(8, (3, 3), name='inner')(r)))
    x = r + y if self.shortcut_first else y + r
    return nn.Dense(3, name='head')(jnp.mean(x, axis=(1, 2)))


def test_unit_names_do_not_depend_on_the_operand_order():
  """A merged unit is named after its first layer in program order (before: after the left
  operand's layer, so ``y + r`` named the stem's unit 'conv')."""
  for shortcut_first in (True, False):
    traced = tracing.trace_network(Residual(shortcut_first), (8, 8, 3))
    assert {u.name: u.producers for u in traced.units} == {
        'stem': (('stem',), ('conv',)), 'inner': (('inner',),)}


class Split(nn.Module):
  pieces: str  # 'segments', 'layer' or 'across'

  @nn.compact
  def __call__(self, x):
    a = nn.Conv(8, (3, 3), name='a')(x)
    if self.pieces == 'segments':  # the concatenation's pieces again
      b = nn.Conv(4, (3, 3), name='b')(x)
      first, second = jnp.split(jnp.concatenate([a, b], axis=-1), [8], axis=-1)
      y = nn.Conv(6, (1, 1), name='c')(first) + nn.Conv(6, (1, 1), name='d')(second)
    elif self.pieces == 'layer':  # one layer's channels, in pieces of 3 and 5
      first, second = jnp.split(a, [3], axis=-1)
      y = nn.Conv(6, (1, 1), name='c')(first) + nn.Conv(6, (1, 1), name='d')(second)
    elif self.pieces == 'across':  # a concatenation, inside its first segment
      b = nn.Conv(4, (3, 3), name='b')(x)
      first, second = jnp.split(jnp.concatenate([a, b], axis=-1), [6], axis=-1)
      y = first * second
    elif self.pieces == 'slices':  # the halves, written as slices
      y = nn.Conv(6, (1, 1), name='c')(a[..., :4]) + nn.Conv(6, (1, 1), name='d')(a[..., 4:])
    else:  # every other channel
      y = a[..., ::2]
    return nn.Dense(3, name='head')(jnp.mean(y, axis=(1, 2)))


def test_split_along_channels():
  """jnp.split at a concatenation's segment boundaries gives the segments back; one layer's
  channels split into pieces (by ``jnp.split`` or slices) make a unit of each piece, which the
  layer writes, inside a concatenation too (before: refused); a strided slice of channels is
  refused as what it is."""
  traced = tracing.trace_network(Split('segments'), (8, 8, 3))
  assert [(r.path, r.in_unit) for r in traced.layers] == [
      (('a',), None), (('b',), None), (('c',), 'a'), (('d',), 'b'), (('head',), 'c')]
  traced = tracing.trace_network(Split('layer'), (8, 8, 3))
  assert traced.max_widths == {'a[0:3]': 3, 'a[3:8]': 5, 'c': 6}
  assert [(r.path, r.in_unit, r.out_unit) for r in traced.layers] == [
      (('a',), None, None), (('c',), 'a[0:3]', 'c'), (('d',), 'a[3:8]', 'c'),
      (('head',), 'c', None)]
  assert dict(traced.output_segments) == {('a',): (('a[0:3]', 3), ('a[3:8]', 5))}
  traced = tracing.trace_network(Split('slices'), (8, 8, 3))
  assert traced.max_widths == {'a[0:4]': 4, 'a[4:8]': 4, 'c': 6}
  # Cut at 6 inside a: first = a[0:6], second = (a[6:8], b); their product joins a[0:6] with
  # that concatenation, so a writes (a[6:8], b, a[6:8]) and b writes b.
  traced = tracing.trace_network(Split('across'), (8, 8, 3))
  assert {u.name: u.producers for u in traced.units} == {
      'a[0:2]': (('a',),), 'a[2:6]': (('a',), ('b',))}
  assert dict(traced.output_segments)[('a',)] == (('a[0:2]', 2), ('a[2:6]', 4), ('a[0:2]', 2))
  with pytest.raises(tracing.TracingError,
                     match=r"Split: slice at .*: slices the channel axis of unit 'a'"):
    tracing.trace_network(Split('strided'), (8, 8, 3))


class Take(nn.Module):
  axis: int

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBN(8, 3, name='a')(x, train)
    x = jnp.take(x, jnp.array([0, 2, 4, 6]), axis=self.axis)
    return nn.Dense(3, name='head')(jnp.mean(x.reshape(x.shape[0], -1, x.shape[-1]), axis=1))


def test_take_along_a_spatial_axis_keeps_the_channels():
  """jnp.take (a gather) along a spatial axis passes the channels through; along the channels
  it is refused (before: both refused, as 'applies gather ... to the channel axis')."""
  traced = tracing.trace_network(Take(1), (8, 8, 3))
  assert [(r.path, r.in_unit, r.out_unit) for r in traced.layers] == [
      (('a', 'conv'), None, 'a/conv'), (('head',), 'a/conv', None)]
  with pytest.raises(tracing.TracingError,
                     match=r"Take: gather(| at .*): gathers \(indexes\) along the channel axis of "
                           r"unit 'a/conv'"):
    tracing.trace_network(Take(3), (8, 8, 3))
