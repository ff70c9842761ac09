"""Supernet training runs end to end on 8 fake devices: resume, mock tfds data, divergence."""

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from autoslim_jax import defaults
from autoslim_jax import input_pipeline
from autoslim_jax import pipeline
from autoslim_jax import train
from conftest import read_scalars


def _config(steps=4):
  config = defaults.get_default_config()
  config.model = 'mobilenet_v1'  # what these tests check is the loop; its 14 layers compile fast
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.35, image_size=8, in_channels=1,
                                  num_classes=10))
  config.min_width = 0.175  # k_min = 5 of 10 groups (0.175 / 0.35 x 10)
  config.dataset.update(dict(name='digits', heldout_size=64, augmentation='shift'))
  config.supernet.update(dict(batch_size=32, num_sandwich=2, base_learning_rate=0.05,
                              base_batch_size=32, schedule='cosine', eval_batch_size=64,
                              log_every_steps=2, eval_every_steps=0, checkpoint_every_steps=100))
  config.supernet.num_epochs = steps / (1436 // 32)  # 1,436 training digits: 44 steps / epoch
  return config


def _train(config, workdir, **kwargs):
  defaults.check_config(config)
  network, space = pipeline.build_network(config)
  source = input_pipeline.create_source(config.dataset)
  return train.train_supernet(config, str(workdir), network, space, source, **kwargs)


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, caplog):
  config = _config(steps=4)
  straight = _train(config, tmp_path / 'straight')
  assert int(straight.step) == 4
  first = _train(config, tmp_path / 'resumed', stop_after_step=2)
  assert int(first.step) == 2
  resumed = _train(config, tmp_path / 'resumed')
  assert int(resumed.step) == 4
  for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.batch_stats)),
                  jax.tree_util.tree_leaves((resumed.params, resumed.batch_stats))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # TensorBoard scalars in the workdir: the training metrics at each log (every 2 steps) and the
  # held-out evaluation at the end; the resumed run's two event files hold the same.
  scalars = read_scalars(tmp_path / 'straight')
  trained = {'loss', 'loss_max', 'loss_min', 'max_accuracy', 'min_accuracy', 'learning_rate',
             'images_per_second', 'eta_minutes', 'epoch'}
  evaluated = {'heldout_accuracy_max', 'heldout_accuracy_min', 'heldout_loss_max',
               'heldout_loss_min'}
  assert set(scalars) == trained | evaluated
  assert all(set(scalars[name]) == {2, 4} for name in trained)
  assert all(set(scalars[name]) == {4} for name in evaluated)
  assert scalars['epoch'] == pytest.approx({2: 2 / 44, 4: 4 / 44})
  assert scalars['eta_minutes'][4] == 0 and scalars['images_per_second'][2] > 0
  assert 0 <= scalars['heldout_accuracy_max'][4] <= 1 and scalars['heldout_loss_max'][4] > 0
  resumed_scalars = read_scalars(tmp_path / 'resumed')
  for name in ('loss_max', 'loss_min', 'heldout_accuracy_max', 'heldout_loss_min'):
    assert resumed_scalars[name] == pytest.approx(scalars[name], rel=1e-5), name
  assert sorted(os.listdir(tmp_path / 'resumed' / 'checkpoints')) == ['2', '4']
  # a finished run restores instead of training again
  again = _train(config, tmp_path / 'straight')
  np.testing.assert_array_equal(np.asarray(jax.tree_util.tree_leaves(again.params)[0]),
                                np.asarray(jax.tree_util.tree_leaves(straight.params)[0]))

  # A damaged latest checkpoint (a truncated copy, a bad disk): set aside with a warning, and
  # the run resumes from the one before it, to the same end.
  checkpoints = tmp_path / 'resumed' / 'checkpoints'
  for root, _, files in os.walk(checkpoints / '4'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\0garbage')
  with caplog.at_level('WARNING'):
    repaired = _train(config, tmp_path / 'resumed')
  assert 'the checkpoint of step 4' in caplog.text and 'is damaged' in caplog.text
  assert os.listdir(tmp_path / 'resumed' / 'damaged_checkpoints')  # kept aside, not deleted
  assert sorted(os.listdir(checkpoints)) == ['2', '4']  # step 4 trained again from step 2
  for a, b in zip(jax.tree_util.tree_leaves(straight.params),
                  jax.tree_util.tree_leaves(repaired.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_few_steps_on_mock_cifar10(tmp_path):
  config = _config()
  config.model_kwargs.update(dict(image_size=32, in_channels=3))
  config.dataset.update(dict(name='cifar10', heldout_size=16, augmentation='crop_flip'))
  config.supernet.eval_batch_size = 16
  config.supernet.num_epochs = 2.0  # 48 training examples: 1 step per epoch
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    state = _train(config, tmp_path)
  assert int(state.step) == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


def test_divergence_stops_with_the_step_and_keeps_the_good_checkpoint(tmp_path):
  config = _config(steps=4)
  config.supernet.base_learning_rate = 1e30
  config.supernet.log_every_steps = 1
  with pytest.raises(train.NonFiniteLossError,
                     match=r'non-finite (the loss of sub-network\(s\) (max|min)|the gradient).* '
                           r'at step \d \(steps \d-\d were checked'):
    _train(config, tmp_path)
  # the diverged state never reached a checkpoint
  assert not os.path.exists(tmp_path / 'checkpoints') or not os.listdir(tmp_path / 'checkpoints')



def test_divergence_after_a_checkpoint_keeps_it_and_a_rerun_resumes_from_it(
    tmp_path, monkeypatch, caplog):
  """A run that checkpoints step 2 and meets a corrupt batch (a NaN pixel) at step 3: it stops
  naming step 3, before any later checkpoint (here step 4, before its log at step 6: steps not
  yet checked are checked before a checkpoint is written), and keeps the checkpoint of step 2.
  Rerun with good data, it resumes from that checkpoint and ends where a run that never met the
  bad batch ends: the kept checkpoint is the good state of step 2."""
  config = _config(steps=6)
  config.supernet.update(dict(log_every_steps=6, checkpoint_every_steps=2))
  straight = _train(config, tmp_path / 'straight')

  train_batches, starts, corrupt = input_pipeline.train_batches, [], [True]

  def batches_with_a_corrupt_step_3(source, batch_size, seed, start_step, *args):
    starts.append(start_step)
    for step, batch in enumerate(train_batches(source, batch_size, seed, start_step, *args),
                                 start_step + 1):
      if step == 3 and corrupt[0]:
        batch = dict(batch, image=batch['image'].copy())
        batch['image'][0, 0, 0, 0] = np.nan
      yield batch

  monkeypatch.setattr(input_pipeline, 'train_batches', batches_with_a_corrupt_step_3)
  with pytest.raises(train.NonFiniteLossError,
                     match=r'non-finite the loss of sub-network\(s\) max, min at step 3 .*the '
                           r'last good checkpoint \(step 2\) is kept'):
    _train(config, tmp_path / 'diverged')
  assert sorted(os.listdir(tmp_path / 'diverged' / 'checkpoints')) == ['2']

  corrupt[0] = False
  with caplog.at_level('INFO'):
    resumed = _train(config, tmp_path / 'diverged')
  assert 'resumed from the checkpoint of step 2' in caplog.text
  assert starts == [0, 2] and int(resumed.step) == 6
  for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.batch_stats)),
                  jax.tree_util.tree_leaves((resumed.params, resumed.batch_stats))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
