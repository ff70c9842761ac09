"""Input pipelines: data sources, augmentation, and batches for every split.

Data sets (``config.dataset.name``):

- ``digits``: the embedded default, scikit-learn's 1,797 8x8 handwritten digits (they ship
  inside the scikit-learn package, so the quickstart runs offline);
- ``npz``: any ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 HWC images,
  integer labels) at ``config.dataset.path``;
- ``cifar10``, ``imagenet2012`` or any other tfds image classification data set, read from
  ``config.dataset.data_dir`` (ImageNet needs the manual download tfds documents);
- ``folder``: a user's images at ``config.dataset.path``, ``PATH/train/CLASS/*.jpg`` and
  ``PATH/test/CLASS/*.jpg`` (tfds' ImageFolder builder).

Each gives ``train`` (the training part), ``heldout`` (the first ``heldout_size`` examples of the
training data, in the data set's fixed order: the greedy search scores configs on it, and training
never sees it) and ``test`` (reported results only).

Every split is cut into one shard per device (``parallel.local_shards``): device d of D reads
shard d, and a process reads only its devices' shards. A global batch is the devices' batches in
mesh order, so it does not depend on how the devices are spread over hosts.

The training stream is a pure function of (seed, step): in epoch e each device's shard is
shuffled with seed (seed, e, d); example i of a device's stream is augmented with the stateless
seed (seed, d, i). A run restarted at step s builds the stream from step s and sees exactly the
batches it would have.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from autoslim_jax import parallel

AUTOTUNE = tf.data.AUTOTUNE
AUGMENTATIONS = ('none', 'shift', 'crop_flip', 'inception')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# The ImageNet files tfds expects in its manual-download folder.
IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


@dataclasses.dataclass
class DataSource:
  """A data set's splits as unbatched tf.data pipelines in a fixed order, for this process."""
  name: str
  # 'train', 'heldout', 'test': make(num_shards, shard, limit) is shard ``shard`` of
  # ``num_shards`` of the split's first ``limit`` examples (all with limit None).
  splits: dict[str, Callable[[int, int, int | None], tf.data.Dataset]]
  num_examples: dict[str, int]  # global sizes
  image_shape: tuple[int, int, int]  # after preprocessing
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  encoded: bool = False  # images are encoded bytes (decoded in preprocessing)


def load_digits_arrays() -> dict[str, np.ndarray]:
  """scikit-learn's digits as uint8 8x8x1 images, split train / test with a fixed permutation."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  order = np.random.RandomState(0).permutation(len(labels))
  test, train = order[:297], order[297:]
  return {'x_train': images[train], 'y_train': labels[train], 'x_test': images[test],
          'y_test': labels[test]}


def load_npz_arrays(path: str) -> dict[str, np.ndarray]:
  if not path:
    raise ValueError('the npz data set needs a file: set config.dataset.path=FILE.npz (arrays '
                     'x_train, y_train, x_test, y_test), or --npz=FILE.npz for the experiment')
  if not os.path.exists(path):
    raise ValueError(f'npz data set: no file at {path!r} (config.dataset.path)')
  with np.load(path) as data:
    missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in data]
    if missing:
      raise ValueError(f'npz data set {path!r} lacks arrays {missing}; it needs x_train, '
                       'y_train, x_test, y_test')
    arrays = {k: data[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
  for split in ('train', 'test'):
    x, y = arrays[f'x_{split}'], arrays[f'y_{split}']
    if x.ndim == 3:
      arrays[f'x_{split}'] = x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) != len(y):
      raise ValueError(f'npz data set {path!r}: x_{split} must be uint8 [N, H, W, C] with one '
                       f'label per image; got {x.dtype} {x.shape} and {len(y)} labels')
  return arrays


def array_source(name: str, arrays: dict[str, np.ndarray], heldout_size: int,
                 mean, std) -> DataSource:
  """A source from in-memory arrays; the held-out part is the first ``heldout_size`` images."""
  x_train, y_train = arrays['x_train'], arrays['y_train'].astype(np.int64)
  check_heldout_size(name, heldout_size, len(y_train))
  parts = {
      'train': (x_train[heldout_size:], y_train[heldout_size:]),
      'heldout': (x_train[:heldout_size], y_train[:heldout_size]),
      'test': (arrays['x_test'], arrays['y_test'].astype(np.int64)),
  }

  def split_fn(images, labels):
    def make(num_shards, shard, limit):
      part = slice(shard, limit, num_shards)  # sliced before tf.data: only the shard is copied
      return tf.data.Dataset.from_tensor_slices({'image': images[part], 'label': labels[part]})
    return make

  channels = x_train.shape[-1]
  return DataSource(
      name=name, splits={k: split_fn(*v) for k, v in parts.items()},
      num_examples={k: len(v[1]) for k, v in parts.items()},
      image_shape=tuple(x_train.shape[1:]),
      num_classes=int(max(y_train.max(), arrays['y_test'].max()) + 1),
      mean=tuple(mean[:channels]) if channels == 3 else (0.5,) * channels,
      std=tuple(std[:channels]) if channels == 3 else (0.25,) * channels)


def check_heldout_size(name: str, heldout_size: int, train_size: int) -> None:
  if not 0 < heldout_size < train_size:
    raise ValueError(f'{name}: dataset.heldout_size {heldout_size} must be in 1..'
                     f'{train_size - 1} (the training data has {train_size} examples)')


def tfds_source(name: str, data_config: ml_collections.ConfigDict) -> DataSource:
  """A tfds data set; the held-out part is ``train[:heldout_size]``."""
  if name == 'folder':
    check_image_folder(data_config.path or '')
    builder = tfds.ImageFolder(data_config.path)
  else:
    try:
      builder = tfds.builder(name, data_dir=data_config.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f'unknown data set {name!r}: not digits, npz, folder or a tfds data set'
                       ) from None
    prepare(builder, name, data_config)
  test_split = 'test' if name != 'imagenet2012' else 'validation'
  heldout = data_config.heldout_size
  split_names = {'train': f'train[{heldout}:]', 'heldout': f'train[:{heldout}]',
                 'test': test_split}
  num_examples = {k: split_size(builder, v) for k, v in split_names.items()}
  check_heldout_size(name, heldout, num_examples['train'] + num_examples['heldout'])
  # (first example, end) of each split in its tfds split, for cutting shards and limits.
  ranges = {'train': ('train', heldout, heldout + num_examples['train']),
            'heldout': ('train', 0, heldout), 'test': (test_split, 0, num_examples['test'])}
  encoded = 'image' in builder.info.features and name in ('imagenet2012', 'folder')
  decoders = {'image': tfds.decode.SkipDecoding()} if encoded else None

  def split_fn(split):
    base, start, end = ranges[split]

    def make(num_shards, shard, limit):
      stop = end if limit is None else min(end, start + limit)
      part = tfds.even_splits(f'{base}[{start}:{stop}]', n=num_shards)[shard]
      dataset = builder.as_dataset(split=part, shuffle_files=False, decoders=decoders,
                                   read_config=tfds.ReadConfig(shuffle_seed=0))
      return dataset.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
    return make

  image_size = data_config.image_size
  if encoded:
    shape, mean, std = (image_size, image_size, 3), IMAGENET_MEAN, IMAGENET_STD
  else:
    shape = tuple(builder.info.features['image'].shape)
    mean, std = (CIFAR_MEAN, CIFAR_STD) if shape[-1] == 3 else ((0.5,), (0.25,))
  return DataSource(
      name=name, splits={k: split_fn(k) for k in split_names},
      num_examples=num_examples, image_shape=shape,
      num_classes=builder.info.features['label'].num_classes, mean=mean, std=std,
      encoded=encoded)


def check_image_folder(path: str) -> None:
  """Opens every image of ``PATH/{train,test}/CLASS/`` (headers and structure, no full decode),
  so an unreadable file is named now rather than failing a training step hours later."""
  import PIL.Image  # pylint: disable=g-import-not-at-top  # only image folders need it
  for split in ('train', 'test'):
    split_dir = os.path.join(path, split)
    if not os.path.isdir(split_dir):
      raise ValueError(f'image folder {path!r} (config.dataset.path) has no {split}/ folder; lay '
                       'it out as PATH/train/CLASS/image.jpg and PATH/test/CLASS/image.jpg')
    for root, _, files in os.walk(split_dir):
      for name in sorted(files):
        file_path = os.path.join(root, name)
        try:
          with PIL.Image.open(file_path) as image:
            image.verify()
        except Exception as e:  # pylint: disable=broad-except  # PIL raises many kinds
          raise ValueError(f'image folder {path!r}: cannot read {file_path} as an image '
                           f'({type(e).__name__}: {e}); remove or replace it') from None


def prepare(builder, name: str, data_config: ml_collections.ConfigDict) -> None:
  """Prepares a tfds data set if it is not there yet (ImageNet: from the manual download)."""
  if builder.info.splits:  # prepared (or mocked with its metadata)
    return
  if name == 'imagenet2012':
    manual_dir = data_config.manual_dir or os.path.join(
        os.path.expanduser('~'), 'tensorflow_datasets', 'downloads', 'manual')
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # pylint: disable=broad-except  # tfds raises several kinds here
      raise ValueError(
          f'imagenet2012 is not prepared in {builder.data_dir!r} and could not be prepared from '
          f'the manual download: put {", ".join(IMAGENET_MANUAL_FILES)} (from image-net.org) in '
          f'{manual_dir!r} (config.dataset.manual_dir) and rerun; tfds prepares it once. '
          f'({type(e).__name__}: {e})') from None
  else:
    builder.download_and_prepare()


def split_size(builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):  # no split metadata (tfds' mock data): count the examples
    return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


def create_source(data_config: ml_collections.ConfigDict) -> DataSource:
  """The data set ``data_config.name`` (see the module docstring)."""
  name = data_config.name
  if name == 'digits':
    return array_source(name, load_digits_arrays(), data_config.heldout_size, CIFAR_MEAN,
                        CIFAR_STD)
  if name == 'npz':
    return array_source(f'npz:{data_config.path}', load_npz_arrays(data_config.path),
                        data_config.heldout_size, CIFAR_MEAN, CIFAR_STD)
  return tfds_source(name, data_config)


# Preprocessing.


def normalize(image: tf.Tensor, source: DataSource) -> tf.Tensor:
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(source.mean)) / tf.constant(source.std)


def decode_and_random_crop(image_bytes, seed, size: int, scale=(0.25, 1.0)):
  """Inception-style crop: a random box of ``scale`` of the area, aspect 3/4..4/3, resized."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed, area_range=scale,
      aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop_size)
  return tf.image.resize(image, (size, size), method='bilinear', antialias=True)


def decode_and_center_crop(image_bytes, size: int, crop_fraction: float = 0.875):
  """Resize the shorter side to size / 0.875 (256 for 224), then crop the centre."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  shape = tf.shape(image)
  scale = (size / crop_fraction) / tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
  new_size = tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32)
  image = tf.image.resize(image, new_size, method='bilinear', antialias=True)
  top, left = (new_size[0] - size) // 2, (new_size[1] - size) // 2
  return image[top:top + size, left:left + size]


def train_preprocess(example, seed, source: DataSource, augmentation: str):
  """Augments one training example with the stateless ``seed`` (shape [2])."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = example['image']
  height, width, channels = source.image_shape
  if augmentation == 'inception':
    image = decode_and_random_crop(image, crop_seed, height)
  elif source.encoded:
    image = decode_and_center_crop(image, height)
  if augmentation in ('shift', 'crop_flip'):
    pad = 1 if augmentation == 'shift' else 4
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, (height, width, channels), crop_seed)
  if augmentation in ('crop_flip', 'inception'):
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = tf.ensure_shape(image, source.image_shape)
  return {'image': normalize(image, source), 'label': tf.cast(example['label'], tf.int32)}


def eval_preprocess(example, source: DataSource):
  image = example['image']
  if source.encoded:
    image = decode_and_center_crop(image, source.image_shape[0])
  image = tf.ensure_shape(image, source.image_shape)
  return {'image': normalize(image, source), 'label': tf.cast(example['label'], tf.int32)}


# Batches.


def ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def steps_per_epoch(source: DataSource, global_batch_size: int) -> int:
  """Whole batches per epoch, equal on every device (the smallest shard decides)."""
  parallel.check_batch_size(global_batch_size, 'the batch size')
  num_devices = jax.device_count()
  steps = source.num_examples['train'] // num_devices // (global_batch_size // num_devices)
  if steps < 1:
    raise ValueError(f'{source.name}: batch size {global_batch_size} exceeds the '
                     f'{source.num_examples["train"]} training examples')
  return steps


def local_batches(per_device: Callable[[int], tf.data.Dataset]) -> tf.data.Dataset:
  """This process's batches: the batches of its devices' shards, side by side in mesh order."""
  shards = parallel.local_shards()
  if len(shards) == 1:
    return per_device(shards[0])
  zipped = tf.data.Dataset.zip(tuple(per_device(shard) for shard in shards))
  return zipped.map(lambda *batches: {k: tf.concat([b[k] for b in batches], 0)
                                      for k in batches[0]})


def train_batches(source: DataSource, global_batch_size: int, seed: int, start_step: int,
                  augmentation: str, shuffle_buffer: int, cache: bool
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's training batches from ``start_step`` on, forever (see module docstring).

  ``shuffle_buffer`` is per device (a host holds one per local device)."""
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f'unknown augmentation {augmentation!r}; valid: {list(AUGMENTATIONS)}')
  num_devices = jax.device_count()
  per_device = global_batch_size // num_devices
  steps = steps_per_epoch(source, global_batch_size)
  start_epoch, offset = divmod(start_step, steps)

  def device_stream(shard: int) -> tf.data.Dataset:
    base = source.splits['train'](num_devices, shard, None)
    if cache:
      base = base.cache()

    def epoch(index):
      # Device 0's seeds are those of a one-device run: the stream does not change with D = 1.
      shuffle_seed = tf.cast(seed, tf.int64) * 1_000_003 + index + shard * 2**32
      return base.shuffle(shuffle_buffer, seed=shuffle_seed,
                          reshuffle_each_iteration=False).take(steps * per_device)

    dataset = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch)
    dataset = dataset.skip(offset * per_device)
    dataset = dataset.enumerate(start=start_step * per_device)
    example_seed = seed * 7919 + shard
    dataset = dataset.map(
        lambda i, ex: train_preprocess(ex, tf.stack([tf.cast(example_seed, tf.int64), i]),
                                       source, augmentation),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(per_device, drop_remainder=True)

  return local_batches(device_stream).prefetch(AUTOTUNE).as_numpy_iterator()


def eval_batches(source: DataSource, split: str, global_batch_size: int,
                 max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example of ``split`` (or its first ``max_examples``) exactly once, in batches of one
  size.

  Each device's last batches are filled up with examples from its shard's start whose ``mask``
  is 0: real images, so that BatchNorm in batch-statistics mode sees a normal batch, but not
  counted.
  """
  parallel.check_batch_size(global_batch_size, 'the batch size')
  num_devices = jax.device_count()
  per_device = global_batch_size // num_devices
  size = source.num_examples[split]
  if max_examples is not None and max_examples < size:
    size = max_examples
  if size < num_devices:
    raise ValueError(f'{source.name}: the {split} split has {size} examples, fewer than the '
                     f'{num_devices} devices; use a larger split')
  # Every device runs the same number of batches (its shard has at most ceil(size / D)).
  num_batches = ceil_div(ceil_div(size, num_devices), per_device)

  def device_stream(shard: int) -> tf.data.Dataset:
    dataset = source.splits[split](num_devices, shard, size).map(
        lambda ex: eval_preprocess(ex, source), num_parallel_calls=AUTOTUNE, deterministic=True)
    real = dataset.map(lambda ex: {**ex, 'mask': tf.constant(1.0)})
    filler = dataset.repeat().map(lambda ex: {**ex, 'mask': tf.constant(0.0)})
    padded = real.concatenate(filler).take(num_batches * per_device)
    return padded.batch(per_device, drop_remainder=True)

  return local_batches(device_stream).prefetch(AUTOTUNE).as_numpy_iterator()


def calibration_batches(source: DataSource, num_images: int, global_batch_size: int
                        ) -> Iterator[dict[str, np.ndarray]]:
  """Full batches of the first ``num_images`` training images (no augmentation), for BatchNorm
  calibration; fewer if the training split is smaller."""
  available = source.num_examples['train']
  num_batches = max(1, min(num_images, available) // global_batch_size)
  if num_batches * global_batch_size > available:
    raise ValueError(f'BatchNorm calibration needs at least one full batch of '
                     f'{global_batch_size} training images; the training split has {available}')
  return itertools.islice(eval_batches(source, 'train', global_batch_size,
                                       num_batches * global_batch_size), num_batches)
