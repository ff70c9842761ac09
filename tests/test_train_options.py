"""Training options run in-process on tiny networks: the distillation teacher, AdamW, the linear
schedule, bfloat16 compute and the npz data set, and a run that learns an easy task."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import Mesh

from autoslim_jax import defaults
from autoslim_jax import models
from autoslim_jax import parallel
from autoslim_jax import pipeline
from autoslim_jax import steps
from autoslim_jax import train
from conftest import read_scalars


def _log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _cross_entropy(logits, targets):
  return float(np.mean(-np.sum(targets * _log_softmax(logits), -1)))


def test_distillation_teacher_is_the_max_member():
  """Through the supernet's step (one device): the max member learns the smoothed labels, and
  the min and the random member each learn softmax(the max member's logits), their losses
  computed here by hand in float64 from each member's own forward pass. The classifier's
  weights are scaled up so that the members' predictions differ clearly: a teacher taken from
  any other member (or the labels) gives losses far outside the tolerance (checked)."""
  network = models.create_network('mobilenet_v1', layout='cifar', width_mult=0.5, image_size=8)
  space = network.channel_space()
  cfg = defaults.get_default_config().supernet
  cfg.update(dict(num_sandwich=3, label_smoothing=0.1, base_batch_size=8, batch_size=8))
  state = steps.create_train_state(
      network, jax.random.key(0), lambda p: steps.create_optimizer(cfg, network, p))
  params = traverse_util.flatten_dict(state.params)
  params['classifier', 'dense', 'kernel'] = params['classifier', 'dense', 'kernel'] * 30
  state = state.replace(params=traverse_util.unflatten_dict(params))
  key_x, key_y = jax.random.split(jax.random.key(1))
  batch = {'image': jax.random.normal(key_x, (8,) + network.input_shape),
           'label': jax.random.randint(key_y, (8,), 0, 10)}

  mesh = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  step = steps.make_train_step(network, space, cfg, mesh=mesh, donate=False)
  _, metrics = step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh),
                    steps.step_inputs(0.1, seed=3))
  metrics = jax.device_get(metrics)

  # Each member alone, in training mode (BatchNorm on the batch), as the step draws them.
  configs = steps.sandwich_configs(space, steps.device_key(3, jnp.int32(0), jnp.int32(0)), 3)
  apply = jax.jit(lambda variables, config: network.supernet().apply(
      variables, batch['image'], config, train=True, mutable=['batch_stats'])[0])
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = {name: np.asarray(apply(variables, config), np.float64)
            for name, config in zip(steps.sandwich_member_names(3), configs)}
  softmax = {name: np.exp(_log_softmax(z)) for name, z in logits.items()}
  labels = np.eye(10)[np.asarray(batch['label'])] * 0.9 + 0.01

  expected = {'max': _cross_entropy(logits['max'], labels),
              'min': _cross_entropy(logits['min'], softmax['max']),
              'random0': _cross_entropy(logits['random0'], softmax['max'])}
  rtol = 1e-4
  for name, want in expected.items():
    assert metrics[f'loss_{name}'] == pytest.approx(want, rel=rtol), name
  for student in ('min', 'random0'):
    for wrong in [labels] + [softmax[n] for n in ('min', 'random0')]:
      assert abs(_cross_entropy(logits[student], wrong) / expected[student] - 1) > 100 * rtol


def _easy_npz(path):
  """640 8x8 grey images of 10 classes: each class owns 6 of the 64 pixels, bright (191 + noise)
  on a dark noise background (0-63). Easy for a convnet; chance is 10%."""
  rng = np.random.default_rng(0)
  owners = rng.permutation(64)[:60].reshape(10, 6)
  patterns = np.zeros((10, 64), bool)
  for label in range(10):
    patterns[label, owners[label]] = True
  labels = rng.permutation(np.arange(640) % 10)
  images = (rng.integers(0, 64, (640, 64)) + 191 * patterns[labels]).astype(np.uint8)
  images = images.reshape(640, 8, 8, 1)
  np.savez(path, x_train=images[:560], y_train=labels[:560], x_test=images[560:],
           y_test=labels[560:])
  return str(path)


def _layer_output_dtypes(module, variables, input_shape):
  """{layer path: dtype of its output} in a training-mode pass (shapes only: nothing runs)."""
  def run(variables, images):
    _, state = module.apply(variables, images, None, train=True, capture_intermediates=True,
                            mutable=['batch_stats', 'intermediates'])
    return state['intermediates']
  outputs = jax.eval_shape(run, variables,
                           jax.ShapeDtypeStruct((2,) + tuple(input_shape), jnp.float32))
  # The network's own output (path ['__call__']) is cast to float32 for the loss.
  return {jax.tree_util.keystr(path): leaf.dtype
          for path, leaf in jax.tree_util.tree_flatten_with_path(outputs)[0] if len(path) > 2}


def test_adamw_linear_schedule_bfloat16_on_npz_learns(tmp_path, monkeypatch):
  """One supernet run through the pipeline (stage supernet) with optimizer='adamw',
  schedule='linear' and compute_dtype='bfloat16' on an npz data set: the data are the file's,
  the optimizer state is Adam's, the logged learning rate follows the linear decay step by step,
  every layer computes in bfloat16 while the params stay float32, and in 40 steps the max
  network's held-out accuracy rises far above chance (10%)."""
  path = _easy_npz(tmp_path / 'easy.npz')
  config = defaults.get_default_config()
  config.model = 'mobilenet_v1'
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.35, image_size=8, in_channels=1,
                                  num_classes=10))
  config.min_width = 0.175
  config.dataset.update(dict(name='npz', path=path, heldout_size=128, augmentation='none'))
  config.supernet.update(dict(
      batch_size=32, num_sandwich=2, optimizer='adamw', schedule='linear',
      base_learning_rate=0.01, base_batch_size=32, weight_decay=1e-4, compute_dtype='bfloat16',
      eval_batch_size=128, log_every_steps=1, eval_every_steps=0, checkpoint_every_steps=1000))
  config.supernet.num_epochs = 40 / (432 // 32)  # 560 - 128 held out = 432: 13 steps / epoch
  config.stages = 'supernet'
  runs = []
  train_supernet = train.train_supernet

  def recording_train_supernet(config, workdir, network, space, source, **kwargs):
    state = train_supernet(config, workdir, network, space, source, **kwargs)
    runs.append((network, source, state))
    return state

  monkeypatch.setattr(train, 'train_supernet', recording_train_supernet)
  pipeline.run(config, str(tmp_path / 'w'))
  (network, source, state), = runs

  assert source.name == f'npz:{path}'
  assert source.num_examples == {'train': 432, 'heldout': 128, 'test': 80}
  total = 40
  assert int(state.step) == total
  adam = [s for s in jax.tree_util.tree_leaves(
      state.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1 and int(adam[0].count) == total

  scalars = read_scalars(tmp_path / 'w' / 'supernet')
  # The rate of step s is the schedule's at the step count before it: 0.01 * (1 - (s-1) / 40).
  want = {s: 0.01 * (1 - (s - 1) / total) for s in range(1, total + 1)}
  assert scalars['learning_rate'] == pytest.approx(want, rel=1e-5, abs=1e-9)

  dtypes = _layer_output_dtypes(network.supernet(), jax.device_get(
      {'params': state.params, 'batch_stats': state.batch_stats}), network.input_shape)
  assert len(dtypes) >= 28 and set(dtypes.values()) == {jnp.dtype(jnp.bfloat16)}, dtypes
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)} == {
      jnp.dtype(jnp.float32)}

  assert scalars['heldout_accuracy_max'][total] >= 0.7
  assert scalars['heldout_loss_max'][total] < 1.2 < np.log(10)


def test_retraining_computes_in_its_compute_dtype(tmp_path, monkeypatch):
  """retrain.compute_dtype reaches the retrained network (it was read nowhere: the pipeline
  retrained in float32 whatever it said). The published MobileNet v1 150M (ImageNet layout, on
  8x8 digits: small enough to train a step on a CPU) retrained for one step with bfloat16
  compute and the supernet in float32: the retraining loop trains a module that computes in
  bfloat16."""
  config = defaults.get_default_config()
  config.model = 'mobilenet_v1'
  config.model_kwargs.update(dict(image_size=8, in_channels=1))
  config.dataset.update(dict(name='digits', heldout_size=64, augmentation='none'))
  config.retrain.update(dict(published=('150M',), uniform_baseline=False, batch_size=16,
                             compute_dtype='bfloat16', log_every_steps=1))
  config.retrain.num_epochs = 1 / ((1500 - 64) // 16)
  config.supernet.compute_dtype = 'float32'
  config.stages = 'retrain'
  fits = []
  fit = train.fit

  def recording_fit(name, cfg, config, workdir, network, module, *args, **kwargs):
    state = fit(name, cfg, config, workdir, network, module, *args, **kwargs)
    fits.append((name, network, module, state))
    return state

  monkeypatch.setattr(train, 'fit', recording_fit)
  pipeline.run(config, str(tmp_path))
  (name, network, module, state), = fits
  # Side by side (the default): the masked module, one network on the leading axis.
  assert name == 'retrain 1 network side by side' and int(state.step) == 1
  one_network = jax.tree_util.tree_map(lambda leaf: leaf[0], jax.device_get(
      {'params': state.params, 'batch_stats': state.batch_stats}))
  dtypes = _layer_output_dtypes(module, one_network, network.input_shape)
  assert len(dtypes) >= 28 and set(dtypes.values()) == {jnp.dtype(jnp.bfloat16)}, dtypes
