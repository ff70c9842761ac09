"""Retraining side by side (retrain.side_by_side): several networks in one compiled program, the
masked supernet at each network's config, equal to training each physically slim network alone.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from autoslim_jax import defaults
from autoslim_jax import export
from autoslim_jax import input_pipeline
from autoslim_jax import models
from autoslim_jax import parallel
from autoslim_jax import pipeline
from autoslim_jax import retrain
from autoslim_jax import steps
from conftest import REPO

PLAIN_CNN = os.path.join(REPO, 'tests', 'plain_cnn.py') + ':plain_cnn'


def _retrain_config(**changes):
  cfg = defaults.get_default_config().retrain
  cfg.update(dict(label_smoothing=0.1, weight_decay=1e-2, momentum=0.9, **changes))
  return cfg


def _slim_run(network, cfg, channels, initial, batches, learning_rates, mesh):
  """The physically slim network at ``channels`` trained alone, as retrain.train_slim's step
  does: the variables after each step."""
  module = network.slim_module(channels)
  variables = export.slim_variables(network, initial, channels)
  state = steps.TrainState.create(
      apply_fn=module.apply, params=variables['params'], batch_stats=variables['batch_stats'],
      tx=steps.create_optimizer(cfg, network, variables['params']))
  step = steps.make_distillation_step(module, network.num_classes, cfg,
                                      lambda seed, at, device: [None], ['net'], mesh,
                                      donate=False)
  history = []
  for batch, learning_rate in zip(batches, learning_rates):
    state, metrics = step(state, parallel.shard_batch(batch, mesh),
                          steps.step_inputs(learning_rate, 0))
    history.append((jax.device_get({'params': state.params, 'batch_stats': state.batch_stats}),
                    float(metrics['loss'])))
  return history


@pytest.mark.parametrize('model,optimizer', [('mobilenet_v1', 'sgd'), (PLAIN_CNN, 'adamw')],
                         ids=['zoo-sgd', 'plain-adamw'])
def test_side_by_side_training_equals_each_slim_network_trained_alone(model, optimizer):
  """In float64, step by step: every network's active weights, BatchNorm statistics and loss
  equal the slim network's trained alone from the same initial weights, with weight decay and
  momentum (or Adam's moments); its inactive entries stay exactly zero."""
  with jax.enable_x64(True):
    kwargs = dict(image_size=8, in_channels=1, num_classes=10)
    kwargs.update(dtype=jnp.float64)
    if model == 'mobilenet_v1':
      kwargs.update(layout='cifar', width_mult=0.5)
    network = models.create_network(model, **kwargs)
    space = network.channel_space(groups=4, min_ratio=0.25)
    narrow = space.min_config()
    mixed = dict(space.max_config())
    for unit in space.unit_names[::2]:
      mixed[unit] = narrow[unit]
    channel_sets = [mixed, narrow]
    cfg = _retrain_config(optimizer=optimizer)
    mesh = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
    make_tx = lambda params: steps.create_optimizer(cfg, network, params)
    state = retrain.side_by_side_state(network, network.supernet(), jax.random.key(0), make_tx,
                                       channel_sets)
    state = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating)
        else x, state)
    initial = [jax.tree_util.tree_map(lambda leaf, i=i: np.asarray(leaf[i]),
                                      {'params': state.params, 'batch_stats': state.batch_stats})
               for i in range(len(channel_sets))]
    rng = np.random.default_rng(1)
    batches = [{'image': rng.normal(size=(16,) + network.input_shape),
                'label': rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
    learning_rates = [0.01, 0.02, 0.005]

    step = steps.make_side_by_side_step(network.supernet(), network.num_classes, cfg,
                                        ['mixed', 'narrow'], mesh, donate=False)
    configs = {unit: np.asarray([c[unit] for c in channel_sets], np.int32)
               for unit in space.unit_names}
    masked_history = []
    for batch, learning_rate in zip(batches, learning_rates):
      state, metrics = step(state, parallel.shard_batch(batch, mesh),
                            {**steps.step_inputs(learning_rate, 0), 'configs': configs})
      masked_history.append((jax.device_get({'params': state.params,
                                             'batch_stats': state.batch_stats}),
                             jax.device_get(metrics)))

    for i, (name, channels) in enumerate(zip(['mixed', 'narrow'], channel_sets)):
      slim_history = _slim_run(network, cfg, channels, initial[i], batches, learning_rates, mesh)
      zero_outside = retrain.embedded_variables(
          network, jax.tree_util.tree_map(np.ones_like, initial[i]), channels)
      for (masked, metrics), (slim, slim_loss) in zip(masked_history, slim_history):
        mine = jax.tree_util.tree_map(lambda leaf: leaf[i], masked)
        np.testing.assert_allclose(metrics[f'loss_{name}'], slim_loss, rtol=1e-10)
        cut = export.slim_variables(network, mine, channels)
        for got, want in zip(jax.tree_util.tree_leaves(cut), jax.tree_util.tree_leaves(slim)):
          np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
        for leaf, inside in zip(jax.tree_util.tree_leaves(mine['params']),
                                jax.tree_util.tree_leaves(zero_outside['params'])):
          assert not np.any(leaf[inside == 0]), 'an entry the slim network lacks moved'
    # The networks trained: each step changed the weights.
    first, last = (jax.tree_util.tree_leaves(h[0]['params']) for h in (masked_history[0],
                                                                       masked_history[-1]))
    assert any(not np.allclose(a, b) for a, b in zip(first, last))


def test_embedded_initial_weights_have_the_slim_layers_distribution():
  """A zoo conv kernel embedded at half its width has the spread of the slim layer's own
  initialisation (He-normal over the slim fan-out), not the max layer's: without the rescale
  the standard deviations differ by sqrt(2)."""
  network = models.create_network('mobilenet_v1', layout='cifar', width_mult=1.0,
                                   image_size=8)
  space = network.channel_space(groups=2, min_ratio=0.5)
  half = space.min_config()
  variables = jax.device_get(network.init(jax.random.key(0)))
  embedded = retrain.embedded_variables(network, variables, half)
  slim = jax.device_get(jax.jit(functools.partial(network.slim_module(half).init, train=False))(
      jax.random.key(1), jnp.zeros((1,) + network.input_shape)))
  path = ('block13_pointwise', 'conv', 'kernel')  # 1024 x 1024 at 1.0x, 512 x 512 at half
  layer = functools.reduce(lambda tree, key: tree[key], path, embedded['params'])
  cin, cout = functools.reduce(lambda tree, key: tree[key], path, slim['params']).shape[-2:]
  active = layer[..., :cin, :cout]
  want = np.std(functools.reduce(lambda tree, key: tree[key], path, slim['params']))
  assert np.std(active) == pytest.approx(want, rel=0.02)
  assert not np.any(layer[..., cout:]) and not np.any(layer[..., cin:, :])
  # BatchNorm's scales start at one inside the net, zero outside.
  bn = embedded['params'][path[0]]['bn']['scale']
  assert np.all(bn[:cout] == 1) and not np.any(bn[cout:])


def test_side_by_side_retraining_resumes_as_if_never_stopped(tmp_path):
  """Stopped after step 2 of 4 (as a preemption would) and run again: the same weights as one
  uninterrupted run, bit for bit, and a finished run is only restored."""
  config = defaults.get_default_config()
  config.model = 'mobilenet_v1'  # compiles about 3x faster than MobileNet v2
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.35, image_size=8, in_channels=1,
                                  num_classes=10))
  config.min_width = 0.175
  config.dataset.update(dict(name='digits', heldout_size=64, augmentation='shift'))
  config.retrain.update(dict(batch_size=32, num_epochs=4 / 45, base_learning_rate=0.02,
                             base_batch_size=32, log_every_steps=1, checkpoint_every_steps=1))
  network, space = pipeline.build_network(config)
  source = input_pipeline.create_source(config.dataset)
  channel_sets = [network.uniform_config(0.2), space.min_config()]
  names = ['wide', 'narrow']

  def train(workdir, **kwargs):
    return retrain.train_side_by_side(config, str(workdir), network, channel_sets, names, source,
                                      **kwargs)

  whole = train(tmp_path / 'whole')
  train(tmp_path / 'stopped', stop_after_step=2)
  assert sorted(os.listdir(tmp_path / 'stopped' / 'checkpoints')) == ['1', '2']
  resumed = train(tmp_path / 'stopped')
  restored = train(tmp_path / 'stopped', restore_only=True)
  for a, b, c in zip(whole, resumed, restored):
    assert a.masked and b.masked
    for x, y, z in zip(*(jax.tree_util.tree_leaves(t.variables) for t in (a, b, c))):
      np.testing.assert_array_equal(x, y)
      np.testing.assert_array_equal(x, z)


def test_plain_network_kernels_start_with_their_own_initialiser_at_the_slim_shape():
  """A plain module's layer narrowed to half its inputs starts with the spread its own
  initialiser (flax's default, LeCun normal over fan-in) gives the slim layer: sqrt(2) wider
  than a slice of the max-width draw, which the side-by-side state started from before."""
  network = models.create_network(PLAIN_CNN, image_size=8, in_channels=1)
  space = network.channel_space(groups=2, min_ratio=0.5)
  half = space.min_config()
  variables = jax.device_get(network.init(jax.random.key(0)))
  embedded = retrain.embedded_variables(network, variables, half, jax.random.key(1))
  sliced = retrain.embedded_variables(network, variables, half)
  slim = export.slim_variables(network, embedded, half)['params']
  kernel = slim['fuse']['kernel']  # 1x1 conv reading two concatenated halved units
  fan_in = int(np.prod(kernel.shape[:-1]))
  assert fan_in < variables['params']['fuse']['kernel'][..., 0].size
  assert np.std(kernel) == pytest.approx(np.sqrt(1 / fan_in), rel=0.15)
  max_fan_in = variables['params']['fuse']['kernel'][..., 0].size
  assert np.std(export.slim_variables(network, sliced, half)['params']['fuse']['kernel']) == (
      pytest.approx(np.sqrt(1 / max_fan_in), rel=0.15))
  # Entries the slim network lacks stay zero; BatchNorm still starts at ones and zeros.
  inside = export.slim_variables(network, embedded, half)
  assert np.count_nonzero(embedded['params']['fuse']['kernel']) == kernel.size
  assert np.all(inside['params']['fuse_bn']['scale'] == 1)
  # The physically slim network (retrain.side_by_side=False) starts the same way.
  alone = network.slim_module(half).init(jax.random.key(2), jnp.zeros((1, 8, 8, 1)))
  assert alone['params']['fuse']['kernel'].shape == kernel.shape
  assert np.std(alone['params']['fuse']['kernel']) == pytest.approx(np.sqrt(1 / fan_in),
                                                                    rel=0.15)
