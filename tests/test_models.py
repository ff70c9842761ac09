import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autoslim_jax import layers
from autoslim_jax import models


def _configs(space, count, seed=0):
  """max, min and random configs as int dicts."""
  configs = [space.max_config(), space.min_config()]
  for key in jax.random.split(jax.random.key(seed), count - 2):
    configs.append({n: int(c) for n, c in space.sample(key).items()})
  return configs


def test_mobilenet_v2_declares_25_units_tied_as_designed():
  network = models.create_network('mobilenet_v2')
  assert len(network.unit_names) == 25
  assert network.max_widths['stem'] == 48 and network.max_widths['last'] == 1920
  by_path = {'/'.join(layer.path): layer for layer in network.layers}
  # a depthwise conv keeps the unit of the conv before it
  assert by_path['block0/depthwise'].out_unit == 'stem'
  assert by_path['block5/depthwise'].out_unit == 'block5_expand'
  # all block outputs of a stage write the same residual stream
  assert {by_path[f'block{i}/project'].out_unit for i in (3, 4, 5)} == {'stage3'}
  assert by_path['classifier'].in_unit == 'last' and by_path['classifier'].out_unit is None
  assert by_path['stem'].in_unit is None  # RGB is never slimmed


def test_cifar_layout_strides():
  network = models.create_network('mobilenet_v2', layout='cifar')
  assert network.input_shape == (32, 32, 3) and network.num_classes == 10
  by_path = {'/'.join(layer.path): layer for layer in network.layers}
  assert by_path['stem'].out_height == 32  # stem at stride 1
  assert by_path['block1/depthwise'].out_height == 32  # 24-channel stage at stride 1
  assert by_path['last'].out_height == 4  # total stride 8


def test_one_trace_serves_every_config(zoo_network, zoo_variables):
  space = zoo_network.channel_space()
  supernet = zoo_network.supernet()
  images = jax.random.normal(jax.random.key(1), (4,) + zoo_network.input_shape)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(variables, images, config):
    return supernet.apply(variables, images, config, train=False)

  outputs = [forward(zoo_variables, images, space.as_arrays(c)) for c in _configs(space, 12)]
  chex.clear_trace_counter()
  assert forward._cache_size() == 1  # pylint: disable=protected-access
  # the configs really differ: so do their logits
  assert len({np.asarray(o).tobytes() for o in outputs}) == len(outputs)


def test_masked_channels_are_zero_with_zero_gradient_and_no_nan(zoo_network, zoo_variables):
  space = zoo_network.channel_space()
  supernet = zoo_network.supernet()
  images = jax.random.normal(jax.random.key(2), (8,) + zoo_network.input_shape)
  labels = jnp.arange(8) % zoo_network.num_classes
  config = space.min_config()
  params, batch_stats = zoo_variables['params'], zoo_variables['batch_stats']

  def loss_fn(params):
    (logits, state) = supernet.apply(
        {'params': params, 'batch_stats': batch_stats}, images, space.as_arrays(config),
        train=True, mutable=['batch_stats', 'intermediates'],
        capture_intermediates=lambda m, _: isinstance(m, layers.SlimConv))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, state

  (loss, state), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(float(loss))
  for leaf in jax.tree_util.tree_leaves((grads, state['batch_stats'])):
    assert np.all(np.isfinite(leaf))

  checked = 0
  for layer in zoo_network.layers:
    if layer.kind == 'dense':
      continue
    node = state['intermediates']
    for name in layer.path:
      node = node[name]
    output = np.asarray(node['__call__'][0])
    active = config[layer.out_unit]
    assert np.all(output[..., active:] == 0), layer.path
    assert np.any(output[..., :active] != 0), layer.path
    grad = grads
    for name in layer.path:
      grad = grad[name]
    kernel = np.asarray(grad['conv']['kernel'])
    assert np.all(kernel[..., active:] == 0), layer.path
    if layer.kind == 'conv' and layer.in_unit is not None:
      assert np.all(kernel[:, :, config[layer.in_unit]:, :] == 0), layer.path
    assert np.all(np.asarray(grad['bn']['scale'])[active:] == 0)
    assert np.all(np.asarray(grad['bn']['bias'])[active:] == 0)
    assert np.any(kernel[..., :active] != 0), layer.path
    checked += 1
  assert checked == len(zoo_network.layers) - 1
  dense = [layer for layer in zoo_network.layers if layer.kind == 'dense']
  assert [layer.path for layer in dense] == [('classifier',)]
  classifier = np.asarray(grads['classifier']['dense']['kernel'])
  assert np.all(classifier[config[dense[0].in_unit]:] == 0)


def test_layer_with_wrong_unit_width_is_refused():
  class Bad(nn.Module):
    widths: dict

    @nn.compact
    def __call__(self, x, config=None, train=False):
      x = layers.SlimConv(self.widths['a'], None, 'a')(x, config, train)
      x = layers.SlimConv(self.widths['b'], 'b', 'b', depthwise=True)(x, config, train)
      return x

  network = models.Network('bad', lambda w: Bad(dict(w)), {'a': 16, 'b': 8},
                           lambda m: {'a': 16, 'b': 8}, (4, 4, 3), 10)
  with pytest.raises(ValueError, match='depthwise conv keeps its input unit'):
    _ = network.layers


def test_unknown_model_and_layout_are_named():
  with pytest.raises(ValueError, match=r"unknown model 'mobilenetv2' \(did you mean "
                                       r"'mobilenet_v2'\?\)"):
    models.create_network('mobilenetv2')
  with pytest.raises(ValueError, match="unknown mobilenet_v2 layout 'cifar10'"):
    models.create_network('mobilenet_v2', layout='cifar10')


@pytest.mark.parametrize('kernel_size,stride', [(3, 1), (3, 2), (5, 2), (5, 1)])
def test_shifted_depthwise_conv_equals_flax_grouped_conv(kernel_size, stride):
  """The CPU form of the depthwise conv has the same parameters and the same output."""
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 16))
  pad = (kernel_size - 1) // 2
  shifted = layers.ShiftedDepthwiseConv(kernel_size, stride, pad)
  grouped = nn.Conv(16, (kernel_size, kernel_size), strides=stride, padding=((pad, pad),) * 2,
                    feature_group_count=16, use_bias=False, kernel_init=layers.CONV_INIT)
  shifted_vars = shifted.init(jax.random.key(0), x)
  grouped_vars = grouped.init(jax.random.key(0), x)
  np.testing.assert_array_equal(shifted_vars['params']['kernel'], grouped_vars['params']['kernel'])
  np.testing.assert_allclose(shifted.apply(shifted_vars, x), grouped.apply(grouped_vars, x),
                             rtol=1e-5, atol=1e-5)
  # The hand-written gradient (both inputs) equals the automatic one of the grouped conv.
  weights = jax.random.normal(jax.random.key(2), grouped.apply(grouped_vars, x).shape)
  grads = [jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) * weights), (0, 1)))(
      grouped_vars, x) for m in (shifted, grouped)]
  for got, want in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('use_bias', [False, True])
def test_pointwise_conv_as_dot_equals_flax_conv(stride, use_bias):
  """The CPU form of the 1x1 conv has the same parameters and the same output."""
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 16))
  dot = layers.PointwiseConvAsDot(24, stride, use_bias=use_bias)
  conv = nn.Conv(24, (1, 1), strides=stride, padding=((0, 0), (0, 0)), use_bias=use_bias,
                 kernel_init=layers.CONV_INIT)
  dot_vars = dot.init(jax.random.key(0), x)
  conv_vars = conv.init(jax.random.key(0), x)
  assert jax.tree_util.tree_map(jnp.shape, dot_vars) == jax.tree_util.tree_map(jnp.shape,
                                                                               conv_vars)
  np.testing.assert_array_equal(dot_vars['params']['kernel'], conv_vars['params']['kernel'])
  params = {'params': {**conv_vars['params'], **(
      {'bias': jnp.linspace(-1, 1, 24)} if use_bias else {})}}
  np.testing.assert_allclose(jax.jit(dot.apply)(params, x), jax.jit(conv.apply)(params, x),
                             rtol=1e-5, atol=1e-5)
