import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoslim_jax import export
from autoslim_jax.resources import ResourceModel


def _randomize_batch_stats(variables, key):
  """Non-trivial running statistics, so slicing them wrongly would show in the logits."""
  leaves, tree = jax.tree_util.tree_flatten(variables['batch_stats'])
  keys = jax.random.split(key, len(leaves))
  new = [jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5) for k, leaf in zip(keys, leaves)]
  return {**variables, 'batch_stats': jax.tree_util.tree_unflatten(tree, new)}


@pytest.mark.parametrize('seed', [0])  # random configs: test_properties.py
def test_slim_network_equals_masked_supernet(zoo_network, zoo_variables, seed):
  space = zoo_network.channel_space()
  config = {n: int(c) for n, c in space.sample(jax.random.key(100 + seed)).items()}
  variables = _randomize_batch_stats(zoo_variables, jax.random.key(seed))
  images = jax.random.normal(jax.random.key(seed), (4,) + zoo_network.input_shape)

  masked = jax.jit(lambda v, x, c: zoo_network.supernet().apply(v, x, c, train=False))(
      variables, images, space.as_arrays(config))
  module, slim_vars = export.export_slim(zoo_network, variables, config)
  slim = jax.jit(lambda v, x: module.apply(v, x, train=False))(slim_vars, images)

  np.testing.assert_allclose(slim, masked, rtol=1e-5, atol=1e-5)
  assert export.count_params(slim_vars['params']) == ResourceModel(zoo_network)(config)['params']
  # physically slim: every kernel has exactly the config's channels
  for layer in zoo_network.layers:
    if layer.out_unit is not None:
      node = slim_vars['params']
      for name in layer.path:
        node = node[name]
      kernel = node['conv' if layer.kind != 'dense' else 'dense']['kernel']
      assert kernel.shape[-1] == config[layer.out_unit], layer.path
  assert export.count_params(slim_vars['params']) < export.count_params(variables['params'])


def test_save_and_load_round_trip(tiny_network, tiny_variables, tmp_path):
  space = tiny_network.channel_space()
  config = space.min_config()
  module, slim_vars = export.export_slim(tiny_network, tiny_variables, config)
  kwargs = dict(layout='cifar', width_mult=0.5, image_size=8)
  export.save_slim(str(tmp_path / 'min'), tiny_network, kwargs, config, slim_vars)
  loaded_module, loaded_vars, description = export.load_slim(str(tmp_path / 'min'))
  assert description['channels'] == config
  assert description['resources'] == ResourceModel(tiny_network)(config)
  assert description['channel_num_list'] == tiny_network.config_to_list(config)
  images = jnp.ones((2,) + tiny_network.input_shape)
  np.testing.assert_array_equal(loaded_module.apply(loaded_vars, images),
                                module.apply(slim_vars, images))
  with pytest.raises(FileNotFoundError, match='model.json is missing'):
    export.load_slim(str(tmp_path / 'nothing'))
