import jax.numpy as jnp
import numpy as np
import pytest

from autoslim_jax import export
from autoslim_jax.resources import ResourceModel


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
