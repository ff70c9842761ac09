"""A Flax NNX network of one's own (tests/nnx_network.py) is searched as a linen one (issue 27):
create_network finds the units and layers of its linen twin, the resources are the twin's, the
wrapped module computes what the NNX module computes, its masked supernet equals its slim
networks in both modes, its BatchNorm statistics train, layers the package cannot slim or run
are refused naming them, and the whole pipeline runs on it from the command line."""

import json
import os

from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_network
from autoslim_jax import deploy
from autoslim_jax import export
from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax import resources
from autoslim_jax import tracing
from conftest import SHORT_SCHEDULE, run
from test_plain_network import assert_masked_equals_slim, random_configs, randomized

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORKS = f'{HERE}/nnx_network.py'
NNX_CNN = f'{NETWORKS}:nnx_cnn'
UNITS = {'stem': 16, 'block/conv1': 16, 'down': 32}
NARROW = {'stem': 8, 'block/conv1': 4, 'down': 16}


def network(name='nnx_cnn', mode_argument=''):
  return models.create_network(f'{NETWORKS}:{name}', mode_argument, image_size=8, in_channels=1)


def images(batch=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, 8, 8, 1))


def test_units_layers_and_resources_are_the_linen_twins():
  net, twin = network(), network('linen_twin')
  assert isinstance(net, plain_network.PlainNetwork) and net.name == NNX_CNN
  assert net.max_widths == twin.max_widths == UNITS
  assert net.layers == twin.layers
  assert {l.path: l.out_unit for l in net.layers} == {
      ('stem',): 'stem', ('block', 'conv1'): 'block/conv1', ('block', 'conv2'): 'stem',
      ('down',): 'down', ('head',): None}  # the residual joins block/conv2 to stem's unit
  # The variables carry the NNX attribute paths, the twin's names.
  shapes = lambda n: jax.tree_util.tree_map(jnp.shape, n.init(jax.random.key(0), batch_size=2))
  assert shapes(net) == shapes(twin)
  assert traverse_util.flatten_dict(shapes(net)['batch_stats'])[('block', 'bn1', 'mean')] == (16,)
  for config in (net.channel_space().max_config(), NARROW):
    assert resources.ResourceModel(net)(config) == resources.ResourceModel(twin)(config)
  hand_macs = {'stem': 9 * 1 * 8 * 64, 'block/conv1': 9 * 8 * 4 * 64,
               'block/conv2': 9 * 4 * 8 * 64, 'down': 9 * 8 * 16 * 16, 'head': 16 * 10}
  hand_params = {'stem': 9 * 8 + 2 * 8, 'block/conv1': 9 * 8 * 4 + 2 * 4,
                 'block/conv2': 9 * 4 * 8 + 2 * 8, 'down': 9 * 8 * 16 + 2 * 16,
                 'head': 16 * 10 + 10}
  counted = resources.ResourceModel(net)(NARROW)
  assert counted['macs'] == sum(hand_macs.values()) == 60064
  assert counted['params'] == sum(hand_params.values()) == 2042


def _nnx_model_with(variables):
  """tests/nnx_network.py's NNX module holding ``variables`` (a linen tree)."""
  model = nnx_network.nnx_cnn()
  graphdef, state = nnx.split(model)
  flat = {**traverse_util.flatten_dict(variables['params']),
          **traverse_util.flatten_dict(variables['batch_stats'])}
  values = {tuple(map(str, path)): variable for path, variable in nnx.to_flat_state(state)}
  assert set(values) == set(flat)
  for path, variable in values.items():
    variable.set_value(jnp.asarray(flat[path]))
  return nnx.merge(graphdef, state)


def test_the_wrapped_module_computes_what_the_nnx_module_computes():
  """Logits in eval() and train(), and train()'s BatchNorm updates, as the NNX module's own."""
  module = network().module
  x = images()
  variables = randomized(module.init(jax.random.key(0), x))
  model = _nnx_model_with(variables)
  model.eval()
  np.testing.assert_allclose(module.apply(variables, x), model(x), rtol=1e-6, atol=1e-6)
  model.train()
  want = model(x)
  got, updates = module.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for path, value in traverse_util.flatten_dict(updates['batch_stats']).items():
    node = model
    for key in path:
      node = getattr(node, key)
    np.testing.assert_allclose(value, node.get_value(), rtol=1e-6, atol=1e-7)


def test_each_key_gives_its_own_initial_weights_when_the_factory_takes_rngs():
  x = images()
  init = lambda net, seed: net.module.init(jax.random.key(seed), x)['params']['stem']['kernel']
  net = network()
  np.testing.assert_array_equal(init(net, 0), init(net, 0))
  assert np.abs(init(net, 0) - init(net, 1)).max() > 0.1
  fixed = network('nnx_cnn_without_rngs')  # its factory's weights, whatever the key
  np.testing.assert_array_equal(init(fixed, 0), init(fixed, 1))
  np.testing.assert_array_equal(init(fixed, 0), nnx_network.nnx_cnn().stem.kernel.get_value())


def test_masked_supernet_equals_slim_networks_in_both_modes():
  net = network()
  x = images()
  variables = randomized(net.module.init(jax.random.key(0), x))
  # Kernels scaled up: a tiny network's logits are otherwise too small to compare.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 3.0 if p[-1].key == 'kernel' else v, variables)
  configs = random_configs(net.traced, 2, seed=3) + [NARROW]
  assert_masked_equals_slim(net.module, net.traced, variables, configs, x, (False, True))


@pytest.mark.parametrize('name, norm, unit, mode_argument', [
    ('nnx_cnn', 'stem_bn', 'stem', ''), ('train_argument', 'bn1', 'conv1', ''),
    ('eval_mode_argument', 'bn1', 'conv1', 'not eval_mode')])
def test_batchnorm_running_statistics_move_in_training_mode(name, norm, unit, mode_argument):
  """train() (or a train argument of __call__, or the one config.mode_argument names) puts the
  NNX BatchNorms on batch statistics: the running averages of the active channels move, the
  inactive ones' stay; eval() reads them (logits independent of the batch)."""
  net = network(name, mode_argument)
  supernet = net.supernet()
  config = dict(net.max_widths, **{unit: 8})
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)) * 3 + 1
  variables = supernet.init(jax.random.key(0), x)
  _, updates = supernet.apply(variables, x, config, train=True, mutable=['batch_stats'])
  mean = updates['batch_stats'][norm]['mean']
  assert float(jnp.abs(mean[:8]).min()) > 0
  np.testing.assert_array_equal(mean[8:], 0)  # inactive channels kept
  logits = supernet.apply(variables, x, config)
  np.testing.assert_allclose(supernet.apply(variables, x[:1], config), logits[:1], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('name, message', [
    ('with_layer_norm', r"WithLayerNorm/norm: reduce_sum at .*nnx_network.py:\d+.*reduces over "
     r"the channel axis of unit 'conv'"),
    ('with_dropout', r'drop: dropout \(rate 0.2\) in training mode: random layers are not '
     r'supported yet'),
])
def test_layers_the_package_cannot_handle_are_refused_naming_them(name, message):
  with pytest.raises(tracing.TracingError, match=message):
    network(name)


def test_a_mode_argument_of_another_name_is_refused_unless_the_config_names_it():
  """Refused after train() alone, pointing at config.mode_argument; given the name in the wrong
  sense, refused saying what it was called with, without that hint."""
  with pytest.raises(tracing.TracingError, match=r"bn1: this BatchNorm normalises with its "
                     r"running averages in training mode \(EvalModeArgument after train\(\)\); "
                     r".*config.mode_argument"):
    network('eval_mode_argument')
  with pytest.raises(tracing.TracingError, match=r"running averages in training mode "
                     r"\(EvalModeArgument after train\(\), called with eval_mode=True\)") as given:
    network('eval_mode_argument', 'eval_mode')
  assert 'config.mode_argument' not in str(given.value)
  with pytest.raises(ValueError, match=r"mode_argument 'eval_mod': EvalModeArgument.__call__ "
                     r"takes no argument 'eval_mod' \(it takes \['x', 'eval_mode'\]\)"):
    network('eval_mode_argument', 'not eval_mod')


def test_whole_pipeline_from_the_command_line(tmp_path):
  workdir = tmp_path / 'run'
  run('autoslim_jax.main', f'--config={NETWORKS}', f'--workdir={workdir}', *SHORT_SCHEDULE)
  results = json.loads((workdir / 'results.json').read_text())
  assert results['model'] == NNX_CNN and results['units'] == list(UNITS)
  (target,) = results['targets']
  searched = target['autoslim']
  assert searched['macs'] <= target['value'] and target['uniform']['macs'] <= target['value']
  assert all(1 <= searched['channels'][u] <= width for u, width in UNITS.items())
  module, variables, description = export.load_slim(searched['export'])
  assert description['channels'] == searched['channels']
  x = np.asarray(images(2))
  logits = np.asarray(module.apply(variables, x, train=False))
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  program = deploy.load_jax_program(searched['export'])  # model.jax_exported
  np.testing.assert_allclose(np.asarray(program.call(x)), logits, rtol=1e-5, atol=1e-5)
