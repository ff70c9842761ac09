"""Resources reproduce design.md's reference numbers (conv + dense MACs at batch 1)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax.resources import ResourceModel

# AutoSlim-MobileNet v2, official channel_num_list layout (design.md, section 3):
# (list, MACs in millions, params in millions, the paper's memory in millions).
PUBLISHED_MBV2 = {
    '207M': ([8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 48, 288, 48, 288, 48, 288, 48,
              288, 64, 432, 64, 432, 64, 648, 176, 720, 176, 720, 176, 1440, 280, 1920, 1000],
             206.8, 4.13, 9.1),
    '305M': ([8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 56, 288, 56, 288, 56, 288, 56,
              288, 96, 432, 96, 432, 96, 864, 240, 1440, 240, 960, 240, 1440, 480, 1920, 1000],
             305.1, 5.77, 10.9),
    '505M': ([32, 16, 144, 24, 176, 24, 192, 48, 240, 48, 144, 48, 264, 88, 288, 88, 336, 88, 432,
              88, 576, 144, 576, 144, 648, 144, 864, 240, 1440, 240, 1440, 240, 1440, 480, 1920,
              1000], 504.9, 6.50, 14.8),
}


@pytest.fixture(scope='module')
def imagenet():
  network = models.create_network('mobilenet_v2')
  return network, ResourceModel(network)


@pytest.fixture(scope='module')
def cifar():
  network = models.create_network('mobilenet_v2', layout='cifar')
  return network, ResourceModel(network)


@pytest.mark.parametrize('name', sorted(PUBLISHED_MBV2))
def test_published_mobilenet_v2_lists(imagenet, name):
  network, resources = imagenet
  channel_list, macs, params, memory = PUBLISHED_MBV2[name]
  result = resources(network.config_from_list(channel_list))
  assert result['macs'] / 1e6 == pytest.approx(macs, rel=1e-3)
  assert result['params'] / 1e6 == pytest.approx(params, rel=1e-2)
  assert result['memory'] / 1e6 == pytest.approx(memory, rel=1e-2)  # paper Table 1


@pytest.mark.parametrize('width,macs,params,memory', [(1.0, 300.8, 3.5, 10.2),
                                                      (0.75, 209.0, 2.6, 8.5),
                                                      (1.3, 509.0, 5.3, 14.3)])
def test_uniform_mobilenet_v2_at_224(imagenet, width, macs, params, memory):
  network, resources = imagenet
  result = resources(network.uniform_config(width))
  # Table 1 quotes MACs and params of the uniform nets to 2-3 digits, 1.0x exactly 300.8M.
  assert result['macs'] / 1e6 == pytest.approx(macs, rel=1e-3 if width == 1.0 else 1e-2)
  assert result['params'] / 1e6 == pytest.approx(params, rel=2e-2)
  assert result['memory'] / 1e6 == pytest.approx(memory, rel=1e-2)


def test_uniform_1x_exact_counts(imagenet):
  network, resources = imagenet
  # The well-known exact figures of MobileNet v2 1.0x: 300,774,272 MACs, 3,504,872 parameters.
  assert resources(network.uniform_config(1.0))['macs'] == 300_774_272
  assert resources(network.uniform_config(1.0))['params'] == 3_504_872


@pytest.mark.parametrize('width,macs,params', [(1.0, 87.98, 2.24), (0.75, 59.31, 1.37),
                                               (0.5, 27.97, 0.70)])
def test_cifar_mobilenet_v2(cifar, width, macs, params):
  network, resources = cifar
  result = resources(network.uniform_config(width))
  assert result['macs'] / 1e6 == pytest.approx(macs, rel=1e-3)
  assert result['params'] / 1e6 == pytest.approx(params, rel=1e-2)


def test_batch_equals_one_at_a_time_and_slimming_never_adds(imagenet):
  network, resources = imagenet
  space = network.channel_space()
  configs = [{n: int(c) for n, c in space.sample(k).items()}
             for k in jax.random.split(jax.random.key(0), 50)]
  batch = resources.of_configs(configs)
  for i, config in enumerate(configs):
    single = resources(config)
    assert all(single[name] == int(round(batch[name][i])) for name in single)
  # remove one group from each unit in turn: no resource grows, MACs strictly shrink
  base = resources(configs[0])
  for unit in space.units:
    smaller = [c for c in unit.choices if c < configs[0][unit.name]]
    if not smaller:
      continue
    slimmed = resources({**configs[0], unit.name: smaller[-1]})
    assert slimmed['macs'] < base['macs']
    assert slimmed['params'] < base['params'] and slimmed['memory'] < base['memory']


def test_uniform_width_beyond_the_supernet_is_refused(imagenet):
  network, _ = imagenet
  with pytest.raises(ValueError, match=r"2.0x uniform config of the 1.5x mobilenet_v2: unit "
                                       r"'stem': channel count 64 is out of range; valid is 1..48"):
    network.uniform_config(2.0)


class _BatchNormVariants(nn.Module):
  """BatchNorms with scale and bias, with neither, with one of them, and one that follows no
  layer (it reads a residual sum)."""

  @nn.compact
  def __call__(self, x, train=False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    x = norm(name='full')(nn.Conv(8, (3, 3), use_bias=False, name='a')(x))
    y = norm(use_scale=False, use_bias=False, name='bare')(
        nn.Conv(8, (3, 3), use_bias=False, name='b')(x))
    y = norm(use_scale=False, name='bias_only')(nn.Conv(8, (3, 3), use_bias=False, name='c')(y))
    x = nn.relu(norm(name='after_sum')(x + y))
    return nn.Dense(10, name='head')(jnp.mean(x, axis=(1, 2)))


def test_batchnorm_params_are_counted_as_they_are():
  """A BatchNorm without scale or bias has none, and one reading a sum has its own (before:
  2 a channel for each BatchNorm after a layer, none for the one after a sum: 1,362 counted of
  1,354 at max width, 324 of 322 at a = 4, b = 3)."""
  network = plain_network.PlainNetwork('variants', _BatchNormVariants(), (8, 8, 1))
  variables = network.module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  assert network.max_widths == {'a': 8, 'b': 8}  # c joins a through the residual sum

  def by_hand(a, b):  # a, full, b, bare, c, bias_only, after_sum, head
    return 9 * a + 2 * a + 9 * a * b + 0 + 9 * b * a + a + 2 * a + (10 * a + 10)

  model = ResourceModel(network)
  assert model({'a': 8, 'b': 8})['params'] == by_hand(8, 8) == 1354
  assert by_hand(8, 8) == sum(np.size(leaf)
                              for leaf in jax.tree_util.tree_leaves(variables['params']))
  assert model({'a': 4, 'b': 3})['params'] == by_hand(4, 3) == 322
