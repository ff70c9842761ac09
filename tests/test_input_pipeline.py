import itertools

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from autoslim_jax import defaults
from autoslim_jax import input_pipeline
from autoslim_jax import parallel


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


def _npz_source(tmp_path, heldout_size, **npz):
  _indexed_npz(tmp_path / 'd.npz', **npz)
  return input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'd.npz'),
                                                   heldout_size=heldout_size))


def _indices(batch, source):
  # Undo the normalisation of the first pixel's red channel.
  red = batch['image'][:, 0, 0, 0] * source.std[0] + source.mean[0]
  return np.round(red * 255).astype(int)


def test_heldout_and_train_are_disjoint_and_every_epoch_is_a_new_permutation(tmp_path):
  source = _npz_source(tmp_path, heldout_size=12)
  assert source.num_examples == {'train': 38, 'heldout': 12, 'test': 10}
  heldout = [i for b in input_pipeline.eval_batches(source, 'heldout', 8)
             for i, m in zip(_indices(b, source), b['mask']) if m]
  assert sorted(heldout) == list(range(12))  # every held-out example exactly once
  # The stream runs on across epochs: positions [38 e, 38 (e + 1)) are epoch e, a permutation
  # of the training examples (none of the held-out ones), a new one each epoch.
  stream = input_pipeline.train_batches(source, 16, 0, 0, 'none')
  seen = np.concatenate([_indices(b, source) for b in itertools.islice(stream, 19)])
  epochs = seen.reshape(8, 38)
  for epoch in epochs:
    assert sorted(epoch) == list(range(12, 50))
  assert len({tuple(e) for e in epochs}) == 8


def test_a_process_reads_its_devices_slices_of_the_global_batch(tmp_path, monkeypatch):
  source = _npz_source(tmp_path, heldout_size=10)
  whole_train = list(itertools.islice(input_pipeline.train_batches(source, 16, 5, 0, 'shift'), 4))
  whole_test = list(input_pipeline.eval_batches(source, 'test', 16))
  # As process 1 of 4 with 2 of the 8 devices (mesh positions 2 and 3): 2 images each.
  monkeypatch.setattr(parallel, 'local_shards', lambda: [2, 3])
  part_train = list(itertools.islice(input_pipeline.train_batches(source, 16, 5, 0, 'shift'), 4))
  part_test = list(input_pipeline.eval_batches(source, 'test', 16))
  for whole, part in zip(whole_train + whole_test, part_train + part_test):
    for key in whole:
      np.testing.assert_array_equal(part[key], whole[key][4:8], err_msg=key)


def test_train_stream_restarted_at_a_step_repeats_itself(tmp_path):
  source = _npz_source(tmp_path, heldout_size=10)
  stream = input_pipeline.train_batches(source, 8, 3, 0, 'crop_flip')
  first = [next(stream) for _ in range(12)]  # crosses two epoch boundaries (5 steps / epoch)
  restarted = input_pipeline.train_batches(source, 8, 3, 7, 'crop_flip')
  for step in range(7, 12):
    again = next(restarted)
    np.testing.assert_array_equal(again['image'], first[step]['image'])
    np.testing.assert_array_equal(again['label'], first[step]['label'])
  other_seed = input_pipeline.train_batches(source, 8, 4, 0, 'crop_flip')
  assert not np.array_equal(next(other_seed)['image'], first[0]['image'])


def test_augmented_images_keep_their_labels(tmp_path):
  """Each image is filled with a grey level that encodes its label; whatever shuffling, shifts,
  crops and flips do, the centre pixel of a training image still names its label."""
  labels = np.random.RandomState(0).randint(0, 10, 200)
  images = np.repeat((labels * 20 + 30).astype(np.uint8)[:, None, None, None], 16, 1)
  images = np.repeat(np.repeat(images, 16, 2), 3, 3)
  np.savez(tmp_path / 'l.npz', x_train=images, y_train=labels, x_test=images[:20],
           y_test=labels[:20])
  for augmentation in ('shift', 'crop_flip', 'inception'):
    source = input_pipeline.create_source(_data_config(
        name='npz', path=str(tmp_path / 'l.npz'), heldout_size=40))
    for batch in itertools.islice(input_pipeline.train_batches(source, 32, 1, 3, augmentation),
                                  12):
      centre = batch['image'][:, 8, 8, 0] * source.std[0] + source.mean[0]
      np.testing.assert_array_equal(np.round((centre * 255 - 30) / 20), batch['label'],
                                    err_msg=augmentation)


def test_eval_batches_pad_with_uncounted_examples(tmp_path):
  source = _npz_source(tmp_path, heldout_size=10)
  batches = list(input_pipeline.eval_batches(source, 'test', 8))
  assert [b['image'].shape[0] for b in batches] == [8, 8]
  assert [float(b['mask'].sum()) for b in batches] == [8, 2]
  counted = [i for b in batches for i, m in zip(_indices(b, source), b['mask']) if m]
  assert counted == list(range(100, 110))
  # The filler is the split's first images: real ones, not zeros.
  assert list(_indices(batches[1], source)[2:]) == list(range(100, 106))
  with pytest.raises(ValueError, match='the batch size 12 is not divisible by the 8 devices'):
    next(input_pipeline.eval_batches(source, 'test', 12))


def test_evaluation_reads_with_threads_even_when_training_uses_worker_processes(tmp_path):
  """Starting grain's workers for every short evaluation cost 9.5 s of a 10 s held-out
  evaluation on an H200; training batches keep the processes they were given."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  _indexed_npz(tmp_path / 'd.npz')
  source = input_pipeline.create_source(_data_config(
      name='npz', path=str(tmp_path / 'd.npz'), heldout_size=10, worker_processes=2))
  evaluation = input_pipeline.eval_batches(source, 'test', 8)
  next(evaluation)
  assert not multiprocessing.active_children()
  del evaluation
  training = input_pipeline.train_batches(source, 8, seed=0, start_step=0,
                                          augmentation='none')
  next(training)
  assert multiprocessing.active_children()  # the check can see workers
  del training


def test_digits_embedded_source():
  source = input_pipeline.create_source(_data_config(name='digits', heldout_size=300))
  assert source.num_examples == {'train': 1200, 'heldout': 300, 'test': 297}
  assert source.image_shape == (8, 8, 1) and source.num_classes == 10


def test_tfds_cifar10_and_imagenet_on_mock_data():
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    cifar = input_pipeline.create_source(_data_config(name='cifar10', heldout_size=8))
    assert cifar.image_shape == (32, 32, 3) and not cifar.resize
    batch = next(input_pipeline.train_batches(cifar, 8, 0, 0, 'crop_flip'))
    assert batch['image'].shape == (8, 32, 32, 3) and cifar.num_classes == 10
    # ImageNet's images vary in size: cropped and resized.
    imagenet = input_pipeline.create_source(_data_config(name='imagenet2012', heldout_size=8,
                                                         image_size=48))
    batch = next(input_pipeline.train_batches(imagenet, 8, 0, 0, 'inception'))
    assert batch['image'].shape == (8, 48, 48, 3)
    test_batch = next(input_pipeline.eval_batches(imagenet, 'test', 8))
    assert test_batch['image'].shape == (8, 48, 48, 3)


def _write_image(path, size, mode='RGB', seed=0):
  rng = np.random.RandomState(seed)
  shape = (size[1], size[0]) + ((3,) if mode == 'RGB' else ())
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(rng.randint(0, 256, shape).astype(np.uint8), mode).save(path)


def test_image_folder_of_many_sizes_is_cropped_and_resized(tmp_path):
  sizes = [(40, 30), (24, 50), (33, 33)]
  for i in range(12):
    name = f'{i}.jpg' if i % 2 else f'{i}.png'
    _write_image(tmp_path / 'train' / f'c{i % 3}' / name, sizes[i % 3], seed=i)
  _write_image(tmp_path / 'train' / 'c0' / 'grey.png', (20, 20), mode='L')
  for i in range(4):
    _write_image(tmp_path / 'val' / f'c{i % 2}' / f'{i}.jpeg', sizes[i % 3], seed=50 + i)
  source = input_pipeline.create_source(_data_config(name='folder', path=str(tmp_path),
                                                     heldout_size=3, image_size=16))
  assert source.num_examples == {'train': 10, 'heldout': 3, 'test': 4}
  assert source.image_shape == (16, 16, 3) and source.resize and source.num_classes == 3
  batch = next(input_pipeline.train_batches(source, 8, 0, 0, 'inception'))
  assert batch['image'].shape == (8, 16, 16, 3) and set(batch['label']) <= {0, 1, 2}
  test = list(input_pipeline.eval_batches(source, 'test', 8))
  assert float(test[0]['mask'].sum()) == 4
  # Without image_size, images of many sizes get the usual ImageNet input.
  default = input_pipeline.create_source(_data_config(name='folder', path=str(tmp_path),
                                                      heldout_size=3))
  assert default.image_shape == (224, 224, 3)


def test_image_folder_of_one_size_keeps_it_and_grey_stays_grey(tmp_path):
  for i in range(10):
    _write_image(tmp_path / 'train' / str(i % 2) / f'{i}.png', (12, 10), mode='L', seed=i)
    _write_image(tmp_path / 'test' / str(i % 2) / f'{i}.png', (12, 10), mode='L', seed=20 + i)
  source = input_pipeline.create_source(_data_config(name='folder', path=str(tmp_path),
                                                     heldout_size=2))
  assert source.image_shape == (10, 12, 1) and not source.resize
  # The held-out part is a fixed random sample of the training images, not the first class.
  batch = next(input_pipeline.eval_batches(source, 'train', 8))
  expected = np.asarray(PIL.Image.open(source.splits['train'].paths[0]))
  np.testing.assert_allclose(batch['image'][0, ..., 0] * 0.25 + 0.5, expected / 255, atol=1e-6)


@pytest.mark.parametrize('layout, message', [
    ({}, "has no train/ folder"),
    ({'train/a/x.png': 'image', 'train/b': 'dir', 'test/a/y.png': 'image'},
     'the class folder .*train/b is empty'),
    ({'train/a/x.png': 'image', 'train/a/notes.txt': 'text', 'test/a/y.png': 'image'},
     'cannot read .*train/a/notes.txt as an image'),
    ({'train/a/x.png': 'image', 'test/a/y.png': 'image', 'test/zebra/z.png': 'image'},
     r"has classes that train/ lacks: \['zebra'\]"),
    ({'train/a/x.png': 'image'}, r'has no test/ \(or val/\) folder'),
])
def test_bad_image_folders_are_named(tmp_path, layout, message):
  for relative, kind in layout.items():
    path = tmp_path / relative
    if kind == 'dir':
      path.mkdir(parents=True)
    elif kind == 'text':
      path.write_text('not an image')
    else:
      _write_image(path, (8, 8))
  with pytest.raises(ValueError, match=message):
    input_pipeline.create_source(_data_config(name='folder', path=str(tmp_path),
                                              heldout_size=1))


def test_bad_data_configs_are_named(tmp_path):
  with pytest.raises(ValueError, match="npz data set: no file at '/nonexistent.npz'"):
    input_pipeline.create_source(_data_config(name='npz', path='/nonexistent.npz'))
  with pytest.raises(ValueError, match='the npz data set needs a file: set config.dataset.path'):
    input_pipeline.create_source(_data_config(name='npz', path=''))
  (tmp_path / 'pickle.npz').write_bytes(b'\x80\x04not a zip')
  with pytest.raises(ValueError, match=r"pickle.npz' is not an .npz file \(the zip of .npy"):
    input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'pickle.npz')))
  np.savez(tmp_path / 'bad.npz', x_train=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"lacks arrays \['y_train', 'x_test', 'y_test'\]"):
    input_pipeline.create_source(_data_config(name='npz', path=str(tmp_path / 'bad.npz')))
  with pytest.raises(ValueError, match='heldout_size 5000 must be in 1..1499'):
    input_pipeline.create_source(_data_config(name='digits', heldout_size=5000))
  with pytest.raises(ValueError, match=r'image_size=32, but the data set holds images of one '
                     r'size \(8x8\)'):
    input_pipeline.create_source(_data_config(name='digits', heldout_size=100, image_size=32))
  with pytest.raises(ValueError, match='tfds data set cifar10 is not prepared in .*tfds build '
                     'cifar10 --data_dir=.* --file_format=array_record'):
    input_pipeline.create_source(_data_config(name='cifar10', data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match='--manual_dir=.*ILSVRC2012_img_train.tar'):
    input_pipeline.create_source(_data_config(name='imagenet2012', data_dir=str(tmp_path),
                                              manual_dir=str(tmp_path / 'manual')))
