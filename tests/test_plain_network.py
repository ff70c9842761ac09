"""A traced plain Flax module as masked supernet and slim network (autoslim_jax/plain_network.py).

The plain rewrites of the zoo's networks (tests/test_tracing.py) share the zoo supernets'
variables trees, so the same weights run through both: the masked plain network must give the
zoo supernet's logits for every config, and the slim network (physically smaller arrays) the
masked network's. BatchNorm statistics and biases are random, so a wrongly masked or sliced
statistic shows in the logits.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax import tracing
from autoslim_jax import training_mode
from conftest import TINY_ZOO, backend_compiles
from test_tracing import (AddToConcat, ConcatSources, ConcatTwice, ConvBN, PlainMobileNetV1,
                          PlainMobileNetV2, PlainResNet50, Split, SqueezeExcite, Take,
                          TupleOutput, unit_mapping)

ZOO = {
    'mobilenet_v1': lambda: PlainMobileNetV1(0.5),
    'mobilenet_v2': lambda: PlainMobileNetV2(0.5),
    'resnet50': lambda: PlainResNet50(0.25),
}


def randomized(variables, seed=0):
  """Variables with BatchNorm running means N(0, 0.1), variances U(0.5, 1.5), and biases and
  scales away from their 0 / 1 initial values: a channel masked or sliced wrongly shows."""
  rng = np.random.default_rng(seed)

  def randomize(path, leaf):
    name = path[-1].key
    if name == 'mean':
      return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    if name in ('var', 'scale'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name == 'bias':
      return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    return np.asarray(leaf)

  return jax.tree_util.tree_map_with_path(randomize, jax.device_get(variables))


def random_configs(traced, count, seed=0):
  rng = np.random.default_rng(seed)
  configs = [{u.name: 1 for u in traced.units}]  # the narrowest, then random ones
  configs += [{u.name: int(rng.integers(1, u.width + 1)) for u in traced.units}
              for _ in range(count - 1)]
  return configs


def images(shape, seed=1, batch=2):
  return jax.random.normal(jax.random.key(seed), (batch,) + tuple(shape))


def plain_tree(zoo_variables):
  """The zoo's variables in the plain rewrite's tree: the zoo's classifier is a ``SlimDense``
  holding an ``nn.Dense`` named 'dense', the rewrite's a bare ``nn.Dense``."""
  flat = traverse_util.flatten_dict(zoo_variables)
  return traverse_util.unflatten_dict(
      {tuple(k for i, k in enumerate(path) if not (k == 'dense' and i == len(path) - 2)): v
       for path, v in flat.items()})


@pytest.fixture(scope='module', params=sorted(ZOO))
def zoo_case(request):
  """(zoo network, plain module, its trace, shared random variables, zoo unit -> traced unit)."""
  network = models.create_network(request.param, **TINY_ZOO[request.param])
  plain = ZOO[request.param]()
  traced = tracing.trace_network(plain, network.input_shape)
  zoo_variables = randomized(network.init(jax.random.key(0), batch_size=2))
  variables = plain_tree(zoo_variables)
  plain_shapes = jax.eval_shape(lambda x: plain.init(jax.random.key(0), x, train=False),
                                jax.ShapeDtypeStruct((2,) + network.input_shape, jnp.float32))
  assert (jax.tree_util.tree_structure(plain_shapes)
          == jax.tree_util.tree_structure(variables)), 'the plain rewrite lost the zoo tree'
  return network, plain, traced, variables, zoo_variables, unit_mapping(traced, network)


def test_masked_plain_network_equals_zoo_supernet(zoo_case):
  network, plain, traced, variables, zoo_variables, mapping = zoo_case
  masked = plain_network.MaskedPlainNetwork(plain, traced)
  zoo_apply = jax.jit(lambda c, x: network.supernet().apply(zoo_variables, x, c, train=False))
  plain_apply = jax.jit(lambda c, x: masked.apply(variables, x, c, train=False))
  x = images(network.input_shape)
  for config in random_configs(traced, 4):
    zoo_config = {z: jnp.int32(config[t]) for z, t in mapping.items()}
    expected = zoo_apply(zoo_config, x)
    got = plain_apply({k: jnp.int32(v) for k, v in config.items()}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def leaf_at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def assert_slim_shapes(traced, variables, slim_vars, config):
  """Each variable axis a unit controls lost exactly the config's inactive channels (per
  concatenation segment)."""
  dropped = {}
  for unit in traced.units:
    for p in unit.params:
      key = (p.path, p.axis)
      dropped[key] = dropped.get(key, 0) + (p.stop - p.start) - config[unit.name]
  for (path, axis), count in dropped.items():
    full = leaf_at(variables, path).shape[axis]
    assert leaf_at(slim_vars, path).shape[axis] == full - count, (path, axis)


def assert_masked_equals_slim(plain, traced, variables, configs, x, train_modes=(False, True)):
  """For each config: the slim network on sliced variables gives the masked network's logits
  (and, in train mode, the slices of its updated BatchNorm statistics); its arrays are the
  config's widths."""
  masked = plain_network.MaskedPlainNetwork(plain, traced)
  has_stats = 'batch_stats' in variables
  for train in train_modes:
    mutable = ['batch_stats'] if train and has_stats else False

    @jax.jit
    def run_masked(config, masked=masked, mutable=mutable, train=train):
      return masked.apply(variables, x, config, train=train, mutable=mutable)

    for config in configs:
      slim, slim_vars = plain_network.export_slim(plain, traced, variables, config)
      assert_slim_shapes(traced, variables, slim_vars, config)
      expected = run_masked({k: jnp.int32(v) for k, v in config.items()})
      got = jax.jit(lambda v, slim=slim, mutable=mutable, train=train: slim.apply(
          v, x, train=train, mutable=mutable))(slim_vars)
      if mutable:
        (expected, expected_stats), (got, got_stats) = expected, got
        sliced = plain_network.slim_variables(traced, expected_stats, config)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                    atol=1e-4 * np.abs(b).max()),
            got_stats, sliced)
      scale = np.abs(expected).max()
      assert scale > 1e-3, 'logits too small to compare'
      # float32 rounding differs (sums over fewer channels), amplified by BatchNorm over a
      # batch of 4 in train mode: 1e-4 of the logits' scale; a wrong channel gives O(1).
      np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * scale,
                                 err_msg=f'train={train} config={config}')


def test_slim_export_equals_masked_network(zoo_case):
  network, plain, traced, variables, _, _ = zoo_case
  # ResNet-50 compiles slowest: fewer configs, inference only.
  count, modes = (2, (False,)) if network.name.startswith('resnet') else (3, (False, True))
  assert_masked_equals_slim(plain, traced, variables, random_configs(traced, count, seed=2),
                            images(network.input_shape, batch=4), modes)


def test_one_compilation_serves_every_config():
  plain = PlainMobileNetV2(0.5)
  traced = tracing.trace_network(plain, (8, 8, 3))
  masked = plain_network.MaskedPlainNetwork(plain, traced)
  x = images((8, 8, 3))
  variables = randomized(masked.init(jax.random.key(0), x))
  step = jax.jit(lambda v, c: masked.apply(v, x, c, train=True, mutable=['batch_stats']))
  configs = [{k: jnp.int32(v) for k, v in c.items()} for c in random_configs(traced, 4)]
  step(variables, configs[0])
  before = backend_compiles()
  outs = [step(variables, c)[0] for c in configs[1:]]
  assert backend_compiles() == before, 'a new config compiled again'
  assert not np.allclose(outs[0], outs[1])  # the configs did change the network


class SqueezeExciteBN(nn.Module):
  """A MobileNet v3 style block: expand, depthwise, squeeze-and-excite gate, project, with
  BatchNorm in train mode; then a residual addition to the gated stream."""

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBN(16, name='expand')(x, train)
    y = ConvBN(16, 3, depthwise=True, name='dw')(x, train)
    s = jnp.mean(y, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Conv(4, (1, 1), name='se_reduce')(s))
    s = nn.hard_sigmoid(nn.Conv(16, (1, 1), name='se_expand')(s))
    y = ConvBN(8, activation=None, name='project')(y * s + x, train)
    return nn.Dense(5, name='head')(jnp.mean(y, axis=(1, 2)))


class ConcatTwiceBN(nn.Module):
  """A tensor concatenated twice, with another source, then BatchNorm over the concatenation
  and a conv reading it."""

  @nn.compact
  def __call__(self, x, train=False):
    a = ConvBN(8, 3, name='a')(x, train)
    b = ConvBN(6, 1, name='b')(a, train)
    y = jnp.concatenate([a, b, a], axis=-1)
    y = nn.relu(nn.BatchNorm(use_running_average=not train, name='bn')(y))
    y = ConvBN(12, 3, strides=2, name='c')(y, train)
    return nn.Dense(5, name='head')(jnp.mean(y, axis=(1, 2)))


SMALL = {
    'squeeze_excite': SqueezeExcite,
    'squeeze_excite_bn': SqueezeExciteBN,
    'concat_twice': ConcatTwice,
    'concat_twice_bn': ConcatTwiceBN,
    'concat_sources': ConcatSources,
    'tuple_output': TupleOutput,
    'split_at_segments': lambda: Split('segments'),
    'split_of_a_layer': lambda: Split('layer'),
    'split_across_segments': lambda: Split('across'),
    'slices_of_a_layer': lambda: Split('slices'),
    'add_to_concat': AddToConcat,
    'take_spatial': lambda: Take(1),
}


@pytest.mark.parametrize('name', sorted(SMALL))
def test_small_networks_masked_equals_slim(name):
  plain = SMALL[name]()
  traced = tracing.trace_network(plain, (8, 8, 3))
  x = images((8, 8, 3), batch=4)
  masked = plain_network.MaskedPlainNetwork(plain, traced)
  variables = randomized(masked.init(jax.random.key(0), x))
  # Kernels scaled up: a tiny network's logits are otherwise too small to compare.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 3.0 if p[-1].key == 'kernel' else v, variables)
  modes = (False, True) if training_mode.mode_arguments(plain) else (False,)
  assert_masked_equals_slim(plain, traced, variables, random_configs(traced, 5, seed=3), x,
                            modes)


def test_slim_network_keeps_shape_dependent_branches():
  """The plain MobileNet v2 adds its residual only where input and output widths agree (a
  Python test on shapes): the slim network follows the traced graph, so the residual stays at
  every config, where re-running the Python code at slim widths would drop or break it."""
  plain = PlainMobileNetV2(0.5)
  traced = tracing.trace_network(plain, (8, 8, 3))
  config = {u.name: max(1, u.width // 2) for u in traced.units}
  slim, slim_vars = plain_network.export_slim(
      plain, traced, randomized(plain.init(jax.random.key(0), images((8, 8, 3)))), config)
  jaxpr = jax.make_jaxpr(lambda v: slim.apply(v, images((8, 8, 3))))(slim_vars)
  adds = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'add']
  full = jax.make_jaxpr(lambda v: plain.apply(v, images((8, 8, 3))))(
      plain.init(jax.random.key(0), images((8, 8, 3))))
  assert len(adds) == len([e for e in full.jaxpr.eqns if e.primitive.name == 'add'])


def test_bad_configs_are_refused():
  plain = ConcatTwice()
  traced = tracing.trace_network(plain, (8, 8, 3))
  with pytest.raises(ValueError, match=r"unit 'a' has 9 channels, allowed 1..8"):
    plain_network.SlimPlainNetwork(plain, traced, {'a': 9, 'b': 3})
  with pytest.raises(ValueError, match=r"missing units \['b'\]"):
    plain_network.SlimPlainNetwork(plain, traced, {'a': 3})
  slim = plain_network.SlimPlainNetwork(plain, traced, {'a': 3, 'b': 3})
  variables = plain.init(jax.random.key(0), images((8, 8, 3)))
  with pytest.raises(ValueError, match='expected'):
    slim.apply(variables, images((8, 8, 3)))  # max-width variables, not sliced


def test_train_step_keeps_inactive_running_statistics():
  """Training a sub-network updates its active channels' running statistics only: an
  inactive channel's statistics are the max network's, not those of masked zeros."""
  plain = ConcatTwiceBN()
  traced = tracing.trace_network(plain, (8, 8, 3))
  masked = plain_network.MaskedPlainNetwork(plain, traced)
  x = images((8, 8, 3), batch=4)
  variables = randomized(masked.init(jax.random.key(0), x))
  config = {'a/conv': 3, 'b/conv': 2, 'c/conv': 5}
  _, updates = masked.apply(variables, x, config, train=True, mutable=['batch_stats'])
  old, new = variables['batch_stats'], updates['batch_stats']
  np.testing.assert_array_equal(new['a']['bn']['mean'][3:], old['a']['bn']['mean'][3:])
  np.testing.assert_array_equal(new['c']['bn']['var'][5:], old['c']['bn']['var'][5:])
  concat = np.concatenate([np.arange(3, 8), np.arange(10, 14), np.arange(17, 22)])
  np.testing.assert_array_equal(new['bn']['mean'][concat], old['bn']['mean'][concat])
  assert not np.allclose(new['a']['bn']['mean'][:3], old['a']['bn']['mean'][:3])
