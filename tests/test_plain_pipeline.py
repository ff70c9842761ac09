"""A plain flax.linen network of one's own through the package: create_network traces it,
resources count a concatenation's segments, export / save / load / retraining work on its slim
networks, profile lists its units, and the whole pipeline runs from the command line
(tests/plain_cnn.py: residual, depthwise, squeeze-and-excite, concatenation)."""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autoslim_jax import defaults
from autoslim_jax import export
from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax import resources
from autoslim_jax import steps
from conftest import SHORT_SCHEDULE, run
from test_plain_network import randomized

HERE = os.path.dirname(os.path.abspath(__file__))
PLAIN_CNN = f'{HERE}/plain_cnn.py:plain_cnn'
UNITS = {'stem': 16, 'res1': 16, 'expand': 32, 'se_reduce': 8, 'branch_a': 16, 'branch_b': 24,
         'fuse': 32}


def no_input_arguments(num_classes=10):
  return nn.Dense(num_classes)


def test_create_network_traces_a_plain_module():
  network = models.create_network(PLAIN_CNN, image_size=8)
  assert isinstance(network, plain_network.PlainNetwork) and network.name == PLAIN_CNN
  assert network.max_widths == UNITS
  assert (network.input_shape, network.num_classes, network.max_width_mult) == ((8, 8, 1), 10, 1.)
  assert {l.path: l.out_unit for l in network.layers if l.out_unit in ('stem', 'expand')} == {
      ('stem',): 'stem', ('res2',): 'stem', ('expand',): 'expand', ('dw',): 'expand',
      ('se_expand',): 'expand'}
  assert network.uniform_config(0.5) == {'stem': 8, 'res1': 8, 'expand': 16, 'se_reduce': 8,
                                         'branch_a': 8, 'branch_b': 16, 'fuse': 16}
  assert models.create_network(PLAIN_CNN, image_size=16).layers[0].out_height == 16
  with pytest.raises(ValueError, match=r"returns a plain flax module \(Dense\); to trace it, its "
                                       r"function must take the arguments \['image_size', "
                                       r"'in_channels'\].*lacks \['image_size', 'in_channels'\]"):
    models.create_network(f'{os.path.abspath(__file__)}:no_input_arguments')


def test_concatenation_macs_count_each_segment():
  """fuse reads concat(branch_a, branch_b): its input channels are the two units' counts."""
  network = models.create_network(PLAIN_CNN)
  config = network.uniform_config(0.5)
  hand = {  # k * k * in * out * output area (a depthwise conv: k * k * channels * area)
      'stem': 9 * 1 * 8 * 64, 'res1': 9 * 8 * 8 * 64, 'res2': 9 * 8 * 8 * 64,
      'expand': 8 * 16 * 64, 'dw': 9 * 16 * 16, 'se_reduce': 16 * 8, 'se_expand': 8 * 16,
      'branch_a': 16 * 8 * 16, 'branch_b': 9 * 16 * 16 * 16, 'fuse': (8 + 16) * 16 * 16,
      'head': 16 * 10}
  assert resources.ResourceModel(network)(config)['macs'] == sum(hand.values()) == 134304
  fuse = next(l for l in network.layers if l.path == ('fuse',))
  assert resources.layer_resources(fuse, config, network)['macs'] == hand['fuse']


def test_export_save_load_and_retrain_init(tmp_path):
  network = models.create_network(PLAIN_CNN)
  variables = randomized(network.init(jax.random.key(0)))
  config = {'stem': 8, 'res1': 5, 'expand': 11, 'se_reduce': 3, 'branch_a': 7, 'branch_b': 16,
            'fuse': 9}
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  masked = network.supernet().apply(variables, images, network.channel_space().as_arrays(config))
  module, slim_vars = export.export_slim(network, variables, config)
  export.save_slim(str(tmp_path), network, {}, config, slim_vars)
  loaded, loaded_vars, description = export.load_slim(str(tmp_path))
  assert description['model'] == PLAIN_CNN and description['channels'] == config
  np.testing.assert_allclose(loaded.apply(loaded_vars, images, train=False), masked, atol=1e-5)
  # retraining initialises the slim module itself (train.fit -> steps.create_train_state)
  state = steps.create_train_state(network, jax.random.key(2), lambda params: optax.sgd(0.1),
                                   module)
  assert jax.tree_util.tree_map(jnp.shape, state.params) == jax.tree_util.tree_map(
      jnp.shape, slim_vars['params'])
  mask = steps.weight_decay_mask(network, state.params)  # no decay of depthwise kernels
  assert mask['stem']['kernel'] and not mask['dw']['kernel'] and not mask['stem_bn']['scale']


def test_profile_lists_the_units_and_their_layers():
  table = run('autoslim_jax.profile', f'--model={PLAIN_CNN}', '--width=0.5', '--per_layer').stdout
  assert 'MACs           0.13 M  (134,304)' in table
  assert any(line.split() == ['expand', '16', '32', 'expand,', 'dw,', 'se_expand']
             for line in table.splitlines())
  # The official-style list: the units in their order, then the classes; it reads back.
  assert 'channel_num_list [8, 8, 16, 8, 8, 16, 16, 10]' in table
  again = run('autoslim_jax.profile', f'--model={PLAIN_CNN}',
              '--channels=[8, 8, 16, 8, 8, 16, 16, 10]').stdout
  assert 'MACs           0.13 M  (134,304)' in again


def network_max_config():
  return dict(UNITS)


def test_fixed_units_keep_their_max_width_everywhere():
  """config.fixed_units: one choice (the max) in the space, so no sample, greedy step or
  uniform baseline narrows it; an unknown name is refused with the units listed."""
  network = models.create_network(PLAIN_CNN, image_size=8)
  network.fix_units(('expand',))
  space = network.channel_space(10, 0.1)
  assert space['expand'].choices == (32,) and space.min_config()['expand'] == 32
  assert all(unit != 'expand' for unit, _ in space.slimming_candidates(space.max_config()))
  assert network.uniform_config(0.5)['expand'] == 32 and network.uniform_config(0.5)['res1'] < 16
  with pytest.raises(ValueError, match=r"config.fixed_units: unknown unit\(s\) \['expnd'\] .*"
                     r"the units are \['stem', "):
    network.fix_units(('expnd',))


def test_whole_pipeline_from_the_command_line(tmp_path):
  workdir = tmp_path / 'run'
  run('autoslim_jax.main', f'--config={HERE}/plain_cnn.py', f'--workdir={workdir}',
      *SHORT_SCHEDULE,
      "--config.fixed_units=('expand',)")
  results = json.loads((workdir / 'results.json').read_text())
  assert results['model'] == PLAIN_CNN and results['units'] == list(UNITS)
  (target,) = results['targets']
  searched = target['autoslim']
  assert searched['macs'] <= target['value'] and target['uniform']['macs'] <= target['value']
  assert all(1 <= searched['channels'][u] <= width for u, width in UNITS.items())
  # config.fixed_units: the pinned unit stays whole in the searched and the uniform net.
  assert searched['channels']['expand'] == target['uniform']['channels']['expand'] == 32
  assert searched['channels'] != network_max_config()
  module, variables, description = export.load_slim(searched['export'])
  assert description['channels'] == searched['channels']
  logits = module.apply(variables, np.zeros((2, 8, 8, 1), np.float32), train=False)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_readme_plain_example(tmp_path):
  """The README's plain-module example traces to the units its comment names, and its config is
  valid (model_kwargs are the function's arguments)."""
  readme = open(os.path.join(HERE, '..', 'README.md')).read()
  code = readme.split('```python\n# my_plain_cnn.py', 1)[1].split('```', 1)[0]
  user_file = tmp_path / 'my_plain_cnn.py'
  user_file.write_text('# my_plain_cnn.py' + code)
  network = models.create_network(f'{user_file}:my_plain_cnn')
  assert network.max_widths == {'conv1': 32, 'conv3': 64}
  spec = importlib.util.spec_from_file_location('my_plain_cnn_config', user_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  defaults.check_config(module.get_config())
