import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from autoslim_jax import defaults
from autoslim_jax import input_pipeline


def _indexed_npz(path, train=50, test=10, size=8):
  """Images whose first pixel is their index: every example can be told apart."""
  def images(n, offset):
    x = np.zeros((n, size, size, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) + offset
    return x
  np.savez(path, x_train=images(train, 0), y_train=np.arange(train) % 10,
           x_test=images(test, 100), y_test=np.arange(test) % 10)


def _data_config(**overrides):
  config = defaults.get_default_config().dataset
  config.update(overrides)
  return config


def _indices(batch, source):
  # Undo the normalisation of the first pixel's red channel.
  red = batch['image'][:, 0, 0, 0] * source.std[0] + source.mean[0]
  return np.round(red * 255).astype(int)


def test_heldout_and_train_are_disjoint_and_cover_the_training_data(tmp_path):
  _indexed_npz(tmp_path / 'd.npz')
  source = input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'd.npz'),
                                                     heldout_size=12))
  assert source.num_examples == {'train': 38, 'heldout': 12, 'test': 10}
  heldout = [i for b in input_pipeline.eval_batches(source, 'heldout', 8)
             for i, m in zip(_indices(b, source), b['mask']) if m]
  assert sorted(heldout) == list(range(12))  # every held-out example exactly once
  # 8 devices, 2 images each: device d reads shard d (training examples 12 + d, 20 + d, ...);
  # an epoch is 2 steps (the smallest shard, 4 examples, decides).
  stream = input_pipeline.train_batches(source, 16, 0, 0, 'none', 100, False)
  batches = [_indices(b, source) for b in itertools.islice(stream, 40)]
  for batch in batches:
    assert [(i - 12) % 8 for i in batch] == [d for d in range(8) for _ in range(2)]
  train = np.concatenate(batches)
  assert set(train) == set(range(12, 50))  # over 20 epochs every training example is seen
  first, second = np.concatenate(batches[:2]), np.concatenate(batches[2:4])
  assert len(set(first)) == 32 and list(first) != list(second)  # reshuffled each epoch


def test_train_stream_restarted_at_a_step_repeats_itself(tmp_path):
  _indexed_npz(tmp_path / 'd.npz')
  source = input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'd.npz'),
                                                     heldout_size=10))
  stream = input_pipeline.train_batches(source, 8, 3, 0, 'crop_flip', 100, True)
  first = [next(stream) for _ in range(12)]  # crosses two epoch boundaries (5 steps / epoch)
  restarted = input_pipeline.train_batches(source, 8, 3, 7, 'crop_flip', 100, True)
  for step in range(7, 12):
    again = next(restarted)
    np.testing.assert_array_equal(again['image'], first[step]['image'])
    np.testing.assert_array_equal(again['label'], first[step]['label'])


def test_eval_batches_pad_with_uncounted_examples(tmp_path):
  _indexed_npz(tmp_path / 'd.npz')
  source = input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'd.npz'),
                                                     heldout_size=10))
  # 10 test images on 8 devices: devices 0 and 1 have 2, the others 1 and a filler.
  batches = list(input_pipeline.eval_batches(source, 'test', 8))
  assert [b['image'].shape[0] for b in batches] == [8, 8]
  assert [float(b['mask'].sum()) for b in batches] == [8, 2]
  counted = [i for b in batches for i, m in zip(_indices(b, source), b['mask']) if m]
  assert sorted(counted) == list(range(100, 110))
  with pytest.raises(ValueError, match='the batch size 12 is not divisible by the 8 devices'):
    next(input_pipeline.eval_batches(source, 'test', 12))


def test_digits_embedded_source():
  source = input_pipeline.create_source(_data_config(name='digits', heldout_size=300))
  assert source.num_examples == {'train': 1200, 'heldout': 300, 'test': 297}
  assert source.image_shape == (8, 8, 1) and source.num_classes == 10


def test_tfds_cifar10_and_imagenet_on_mock_data():
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    cifar = input_pipeline.create_source(_data_config(name='cifar10', heldout_size=8))
    batch = next(input_pipeline.train_batches(cifar, 8, 0, 0, 'crop_flip', 100, True))
    assert batch['image'].shape == (8, 32, 32, 3) and cifar.num_classes == 10
    imagenet = input_pipeline.create_source(_data_config(name='imagenet2012', heldout_size=8,
                                                         image_size=48))
    batch = next(input_pipeline.train_batches(imagenet, 8, 0, 0, 'inception', 100, False))
    assert batch['image'].shape == (8, 48, 48, 3)
    test_batch = next(input_pipeline.eval_batches(imagenet, 'test', 8))
    assert test_batch['image'].shape == (8, 48, 48, 3)


def test_bad_data_configs_are_named(tmp_path):
  with pytest.raises(ValueError, match="npz data set: no file at '/nonexistent.npz'"):
    input_pipeline.create_source(_data_config(name='npz', path='/nonexistent.npz'))
  with pytest.raises(ValueError, match='the npz data set needs a file: set config.dataset.path'):
    input_pipeline.create_source(_data_config(name='npz', path=''))
  np.savez(tmp_path / 'bad.npz', x_train=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"lacks arrays \['y_train', 'x_test', 'y_test'\]"):
    input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'bad.npz')))
  with pytest.raises(ValueError, match='heldout_size 5000 must be in 1..1499'):
    input_pipeline.create_source(_data_config(name='digits', heldout_size=5000))
  with pytest.raises(ValueError, match='manual download'):
    input_pipeline.create_source(_data_config(name='imagenet2012', data_dir=str(tmp_path),
                                              manual_dir=str(tmp_path / 'manual')))
