"""Input pipelines on grain: data sources, augmentation, and the batches of every split.

No TensorFlow: sources are random-access sequences of examples, images are decoded with Pillow
(or by tfds' numpy decoders) and augmented with numpy, in grain's reader threads or worker
processes (``config.dataset.worker_processes``).

Data sets (``config.dataset.name``):

- ``digits``: the embedded default, scikit-learn's 1,797 8x8 handwritten digits (they ship
  inside the scikit-learn package, so the quickstart runs offline);
- ``npz``: any ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 HWC images,
  integer labels) at ``config.dataset.path``;
- ``folder``: a user's images at ``config.dataset.path``: ``PATH/train/CLASS/*`` and
  ``PATH/test/CLASS/*`` (or ``PATH/val/CLASS/*``, ImageNet's layout), JPEG, PNG or anything
  Pillow reads, any sizes, grey or colour;
- ``cifar10``, ``imagenet2012`` or any other tfds image classification data set prepared in
  ``config.dataset.data_dir`` as array_record files (read with ``tfds.data_source``; preparing
  needs TensorFlow once: ``prepare_command`` says how).

Each gives ``train`` (the training part), ``heldout`` (the first ``heldout_size`` examples of the
training data, in the data set's fixed order: the greedy search scores configs on it, and training
never sees it) and ``test`` (reported results only).

Images of one size keep it (``dataset.image_size`` 0); images of many sizes (ImageNet, most
folders) are cropped and resized to ``image_size`` squares: an Inception-style random crop when
training with ``augmentation='inception'``, else the central 87.5% square.

Batches do not depend on the number of devices or on how they are spread over hosts. The
training stream is one sequence of the training examples, shuffled anew each epoch (grain's
``shuffle``) and augmented example by example with a generator seeded from (seed, position)
(grain's ``random_map``); the global batch of step s is positions [s B, (s + 1) B) of it, device
d of the mesh takes the d-th slice of B / D, and a process reads, decodes and augments only its
own devices' slices. The batch of step s is therefore a pure function of (seed, s): a run
restarted at step s sees exactly the batches it would have seen.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import sys
import time
import zipfile
from typing import Any, Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging

from autoslim_jax import parallel

AUGMENTATIONS = ('none', 'shift', 'crop_flip', 'inception')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# The ImageNet files tfds expects in its manual-download folder.
IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
# Pillow modes of grey images: a folder of only these is read with one channel.
GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')
# The held-out split of an image folder is a fixed random sample of its training images.
FOLDER_ORDER_SEED = 0
# The side images of many sizes are cropped and resized to when dataset.image_size is 0.
DEFAULT_RESIZE = 224
# Batches read ahead in parallel when no worker processes are asked for (at most one per core).
READER_THREADS = 16


@dataclasses.dataclass
class DataSource:
  """A data set's splits as random-access sequences of examples ({'image': uint8 HWC array,
  'label': int}), in a fixed order."""
  name: str
  splits: dict[str, Sequence[dict[str, Any]]]  # 'train', 'heldout', 'test'
  image_shape: tuple[int, int, int]  # the network's input: after cropping and resizing
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  resize: bool = False  # images vary in size: cropped and resized to image_shape
  worker_processes: int = 0  # grain worker processes (0: reader threads of this process)

  @property
  def num_examples(self) -> dict[str, int]:
    return {name: len(split) for name, split in self.splits.items()}


# Sources.


class ArrayExamples:
  """Examples of in-memory arrays (views: nothing is copied)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': int(self.labels[index])}


class FileExamples:
  """Image files decoded with Pillow on reading."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int], channels: int):
    self.paths, self.labels, self.channels = list(paths), list(labels), channels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': read_image(self.paths[index], self.channels), 'label': self.labels[index]}


class TfdsExamples:
  """A ``tfds.data_source`` split (decoded by tfds with numpy and Pillow), as plain examples."""

  def __init__(self, source, channels: int):
    self.source, self.channels = source, channels

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self.source[index]
    return {'image': to_channels(np.asarray(example['image']), self.channels),
            'label': int(example['label'])}


def read_image(path: str, channels: int) -> np.ndarray:
  import PIL.Image  # pylint: disable=g-import-not-at-top  # only image folders need it
  with PIL.Image.open(path) as image:
    image = np.asarray(image.convert('RGB' if channels == 3 else 'L'))
  return image if channels == 3 else image[..., None]


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == channels:
    return image
  if channels == 3 and image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  raise ValueError(f'an image of {image.shape[-1]} channels where {channels} were expected')


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
  if not zipfile.is_zipfile(path):  # numpy would try it as a pickle and say so
    raise ValueError(f'npz data set: {path!r} is not an .npz file (the zip of .npy arrays that '
                     'numpy.savez writes, with x_train, y_train, x_test, y_test)')
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


def default_mean_std(channels: int, photos: bool):
  if channels != 3:
    return (0.5,) * channels, (0.25,) * channels
  return (IMAGENET_MEAN, IMAGENET_STD) if photos else (CIFAR_MEAN, CIFAR_STD)


def array_source(name: str, arrays: dict[str, np.ndarray], data_config) -> DataSource:
  """A source from in-memory arrays; the held-out part is the first ``heldout_size`` images."""
  x_train, y_train = arrays['x_train'], arrays['y_train'].astype(np.int64)
  heldout = data_config.heldout_size
  check_heldout_size(name, heldout, len(y_train))
  shape = tuple(x_train.shape[1:])
  check_image_size(name, data_config.image_size, {shape[:2]}, 'images of one size')
  mean, std = default_mean_std(shape[-1], photos=False)
  return DataSource(
      name=name,
      splits={'train': ArrayExamples(x_train[heldout:], y_train[heldout:]),
              'heldout': ArrayExamples(x_train[:heldout], y_train[:heldout]),
              'test': ArrayExamples(arrays['x_test'], arrays['y_test'].astype(np.int64))},
      image_shape=shape,
      num_classes=int(max(y_train.max(), arrays['y_test'].max()) + 1), mean=mean, std=std,
      worker_processes=data_config.worker_processes)


def check_heldout_size(name: str, heldout_size: int, train_size: int) -> None:
  if not 0 < heldout_size < train_size:
    raise ValueError(f'{name}: dataset.heldout_size {heldout_size} must be in 1..'
                     f'{train_size - 1} (the training data has {train_size} examples)')


def check_image_size(name: str, image_size: int, sizes, what: str) -> None:
  """Arrays keep their size: an ``image_size`` other than theirs (or 0) is refused."""
  (height, width), = sizes
  if image_size and (image_size, image_size) != (height, width):
    raise ValueError(f'{name}: config.dataset.image_size={image_size}, but the data set holds '
                     f'{what} ({height}x{width}) and is not resized; set image_size=0 (their '
                     'size) and the network\'s config.model_kwargs.image_size to match')


def image_shape_for(name: str, image_size: int, sizes: set[tuple[int, int]] | None,
                    channels: int, where: str) -> tuple[tuple[int, int, int], bool]:
  """(the network's input shape, whether images are resized) for images of ``sizes`` (None:
  of many sizes, not listed). ``image_size`` 0 keeps one size and gives images of many sizes
  the usual ImageNet input, ``DEFAULT_RESIZE`` squared."""
  if not image_size and sizes is not None and len(sizes) == 1:
    (height, width), = sizes
    return (height, width, channels), False
  if not image_size:
    image_size = DEFAULT_RESIZE
    logging.info('%s: the images in %s have many sizes: cropped and resized to %dx%d '
                 '(config.dataset.image_size)', name, where, image_size, image_size)
  return (image_size, image_size, channels), sizes != {(image_size, image_size)}


# Image folders.


@dataclasses.dataclass
class _ImageHeader:
  path: str
  height: int
  width: int
  grey: bool


def _read_header(path: str) -> _ImageHeader:
  import PIL.Image  # pylint: disable=g-import-not-at-top
  try:
    with PIL.Image.open(path) as image:
      width, height = image.size
      grey = image.mode in GREY_MODES
      image.verify()
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many kinds
    raise ValueError(f'image folder: cannot read {path} as an image ({type(e).__name__}: '
                     f'{e}); remove or replace it') from None
  return _ImageHeader(path, height, width, grey)


def _class_files(split_dir: str) -> dict[str, list[str]]:
  """CLASS -> its image files (sorted) for ``split_dir/CLASS/*``."""
  classes = {}
  for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if entry.name.startswith('.'):
      continue
    if not entry.is_dir():
      raise ValueError(f'image folder: {entry.path} is a file where a class folder was expected; '
                       f'lay images out as {split_dir}/CLASS/IMAGE')
    names = sorted(n for n in os.listdir(entry.path) if not n.startswith('.'))
    if not names:
      raise ValueError(f'image folder: the class folder {entry.path} is empty; give it images '
                       'or remove it')
    classes[entry.name] = [os.path.join(entry.path, n) for n in names]
  return classes


def folder_source(data_config: ml_collections.ConfigDict) -> DataSource:
  """``PATH/train/CLASS/*`` and ``PATH/{test,val}/CLASS/*``; every file's header is read now,
  so that a file that is not an image is named before anything compiles."""
  path = data_config.path
  if not path:
    raise ValueError('the folder data set needs its path: set config.dataset.path=PATH with '
                     'PATH/train/CLASS/IMAGE and PATH/test/CLASS/IMAGE (or PATH/val/...)')
  train_dir = os.path.join(path, 'train')
  if not os.path.isdir(train_dir):
    raise ValueError(f'image folder {path!r} (config.dataset.path) has no train/ folder; lay it '
                     'out as PATH/train/CLASS/IMAGE and PATH/test/CLASS/IMAGE (or PATH/val/...)')
  test_dir = next((os.path.join(path, d) for d in ('test', 'val')
                   if os.path.isdir(os.path.join(path, d))), None)
  if test_dir is None:
    raise ValueError(f'image folder {path!r} has no test/ (or val/) folder for the test split; '
                     'lay it out as PATH/test/CLASS/IMAGE')
  train_classes, test_classes = _class_files(train_dir), _class_files(test_dir)
  if not train_classes:
    raise ValueError(f'image folder: {train_dir} has no class folders (train/CLASS/IMAGE)')
  extra = sorted(set(test_classes) - set(train_classes))
  if extra:
    raise ValueError(f'image folder: {test_dir} has classes that train/ lacks: {extra[:5]}; '
                     f'the classes of train/ are {sorted(train_classes)[:10]}'
                     f'{" ..." if len(train_classes) > 10 else ""}')
  label_of = {name: i for i, name in enumerate(train_classes)}

  def examples(classes):
    return [(f, label_of[c]) for c, paths in classes.items() for f in paths]

  train, test = examples(train_classes), examples(test_classes)
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    headers = list(pool.map(_read_header, [f for f, _ in train + test]))
  logging.info('image folder %s: %d training and %d test images in %d classes (headers read '
               'in %.1f s)', path, len(train), len(test), len(train_classes),
               time.perf_counter() - start)
  channels = 1 if all(h.grey for h in headers) else 3
  shape, resize = image_shape_for('folder', data_config.image_size,
                                  {(h.height, h.width) for h in headers}, channels, path)
  # A fixed random order: the held-out part samples every class, not the first classes.
  train = [train[i] for i in np.random.RandomState(FOLDER_ORDER_SEED).permutation(len(train))]
  heldout = data_config.heldout_size
  check_heldout_size(f'folder:{path}', heldout, len(train))

  def files(part):
    return FileExamples([f for f, _ in part], [label for _, label in part], channels)

  mean, std = default_mean_std(channels, photos=resize)
  return DataSource(
      name=f'folder:{path}',
      splits={'train': files(train[heldout:]), 'heldout': files(train[:heldout]),
              'test': files(test)},
      image_shape=shape, num_classes=len(train_classes), mean=mean, std=std, resize=resize,
      worker_processes=data_config.worker_processes)


# tfds data sets.


def prepare_command(name: str, data_config: ml_collections.ConfigDict) -> str:
  data_dir = data_config.data_dir or '~/tensorflow_datasets'
  command = (f"pip install 'autoslim-jax[prepare]' && tfds build {name} --data_dir={data_dir} "
             '--file_format=array_record')
  if name == 'imagenet2012':
    manual_dir = data_config.manual_dir or '~/tensorflow_datasets/downloads/manual'
    command += (f' --manual_dir={manual_dir} (after putting {", ".join(IMAGENET_MANUAL_FILES)} '
                'from image-net.org there)')
  return command


def tfds_source(name: str, data_config: ml_collections.ConfigDict) -> DataSource:
  """A prepared tfds data set; the held-out part is ``train[:heldout_size]``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # 0.3 s: only here

  data_dir = data_config.data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f'unknown data set {name!r}: not digits, npz, folder or a tfds data set'
                     ) from None
  splits = builder.info.splits  # empty before preparation (and in tfds' mock data)
  # ImageNet's 'test' split has no labels: its results are on 'validation', as everyone's.
  test_split = ('validation' if name.startswith('imagenet') or
                ('validation' in splits and 'test' not in splits) else 'test')

  def open_split(tfds_split):
    try:
      return tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # pylint: disable=broad-except  # tfds raises several kinds here
      if not builder.is_prepared():
        raise ValueError(f'the tfds data set {name} is not prepared in {builder.data_dir}; '
                         f'prepare it once (this needs TensorFlow): '
                         f'{prepare_command(name, data_config)}') from None
      raise ValueError(
          f'cannot read the tfds data set {name} in {builder.data_dir} ({type(e).__name__}: '
          f'{e}). It must be prepared as array_record files: {prepare_command(name, data_config)}'
          f'; a TFRecord preparation converts with: tfds convert_format --dataset_dir='
          f'{builder.data_dir} --out_file_format=array_record') from None

  heldout = data_config.heldout_size
  check_heldout_size(name, heldout, len(open_split('train')))
  split_names = {'train': f'train[{heldout}:]', 'heldout': f'train[:{heldout}]',
                 'test': test_split}
  shape = builder.info.features['image'].shape
  channels = shape[-1] or 3
  sizes = {tuple(shape[:2])} if None not in shape[:2] else None
  image_shape, resize = image_shape_for(name, data_config.image_size, sizes, channels,
                                        f'tfds {name}')
  mean, std = default_mean_std(channels, photos=resize)
  return DataSource(
      name=name,
      splits={k: TfdsExamples(open_split(v), channels) for k, v in split_names.items()},
      image_shape=image_shape, num_classes=builder.info.features['label'].num_classes,
      mean=mean, std=std, resize=resize, worker_processes=data_config.worker_processes)


def create_source(data_config: ml_collections.ConfigDict) -> DataSource:
  """The data set ``data_config.name`` (see the module docstring)."""
  if data_config.worker_processes < 0:
    raise ValueError(f'config.dataset.worker_processes is {data_config.worker_processes}; '
                     'valid: 0 (reader threads of this process) or a number of processes')
  name = data_config.name
  if name == 'digits':
    return array_source(name, load_digits_arrays(), data_config)
  if name == 'npz':
    return array_source(f'npz:{data_config.path}', load_npz_arrays(data_config.path),
                        data_config)
  if name == 'folder':
    return folder_source(data_config)
  return tfds_source(name, data_config)


# Preprocessing: numpy and Pillow, one example at a time.


def resized_crop(image: np.ndarray, box: tuple[float, float, float, float],
                 size: tuple[int, int]) -> np.ndarray:
  """The ``box`` (left, top, right, bottom) of ``image`` resized to ``size`` (height, width):
  Pillow's bilinear filter, which widens with the scale when shrinking (antialiased)."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  grey = image.shape[-1] == 1
  pil = PIL.Image.fromarray(image[..., 0] if grey else image)
  out = np.asarray(pil.resize((size[1], size[0]), PIL.Image.BILINEAR, box=box))
  return out[..., None] if grey else out


def center_crop_box(height: int, width: int, fraction: float = 0.875):
  """The central square of ``fraction`` of the shorter side (224 of 256 for ImageNet)."""
  side = min(height, width) * fraction
  top, left = (height - side) / 2, (width - side) / 2
  return (left, top, left + side, top + side)


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
  """Inception-style: a box of ``scale`` of the area and aspect ``ratio`` (log-uniform); the
  whole image when ``attempts`` draws do not fit."""
  area = height * width
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      return (left, top, left + w, top + h)
  return (0, 0, width, height)


def pad_and_crop(image: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  """A random shift by up to ``pad`` pixels, zeros filling in (CIFAR's pad-4 crop)."""
  height, width = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return padded[top:top + height, left:left + width]


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  return ((image.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
          ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Augments one training example with the generator grain seeds from (seed, position)."""
  source_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augmentation: str
  resize: bool

  def __call__(self, example, rng: np.random.Generator):
    image = example['image']
    height, width, _ = self.source_shape
    if self.augmentation == 'inception':
      image = resized_crop(image, random_crop_box(*image.shape[:2], rng), (height, width))
    elif self.resize:
      image = resized_crop(image, center_crop_box(*image.shape[:2]), (height, width))
    if self.augmentation in ('shift', 'crop_flip'):
      image = pad_and_crop(image, 1 if self.augmentation == 'shift' else 4, rng)
    if self.augmentation in ('crop_flip', 'inception') and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': normalize(image, self.mean, self.std),
            'label': np.int32(example['label'])}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """The central crop (images of many sizes), normalized unless ``keep_dtype``; no randomness."""
  source_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  resize: bool
  keep_dtype: bool = False

  def __call__(self, example):
    image = example['image']
    if self.resize:
      image = resized_crop(image, center_crop_box(*image.shape[:2]), self.source_shape[:2])
    if not self.keep_dtype:
      image = normalize(image, self.mean, self.std)
    return {'image': image, 'label': np.int32(example['label'])}


# Batches.


def steps_per_epoch(source: DataSource, global_batch_size: int) -> int:
  """Whole global batches per epoch (the stream runs on across epochs: none is dropped)."""
  parallel.check_batch_size(global_batch_size, 'the batch size')
  steps = source.num_examples['train'] // global_batch_size
  if steps < 1:
    raise ValueError(f'{source.name}: batch size {global_batch_size} exceeds the '
                     f'{source.num_examples["train"]} training examples')
  return steps


@dataclasses.dataclass(frozen=True)
class ProcessPart:
  """Example ``i`` of this process's stream: its part (``offset``, ``count``) of each global
  batch of ``global_batch`` positions of ``examples``. With ``size``, positions past it wrap to
  the split's start and are marked ``mask`` 0 (evaluation's filler)."""
  examples: Any  # a grain MapDataset
  global_batch: int
  offset: int
  count: int
  size: int | None = None

  def __call__(self, i: int):
    batch, within = divmod(i, self.count)
    position = batch * self.global_batch + self.offset + within
    if self.size is None:
      return self.examples[position]
    return {**self.examples[position % self.size],
            'mask': np.float32(position < self.size)}


def process_batches(examples, global_batch_size: int, num_batches: int | None, start: int = 0,
                    size: int | None = None, worker_processes: int = 0
                    ) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of global batches ``start`` to ``num_batches`` (None: forever) of
  ``examples``: its devices' slices side by side, in mesh order."""
  shards = parallel.local_shards()
  per_device = global_batch_size // jax.device_count()
  count = len(shards) * per_device  # a process's devices are one block of the mesh
  part = ProcessPart(examples, global_batch_size, shards[0] * per_device, count, size)
  length = sys.maxsize if num_batches is None else num_batches * count
  batches = grain.MapDataset.range(length).map(part).batch(count, drop_remainder=True)[start:]
  # Whole batches are the unit of parallel work (threads or processes), so a batch holds the
  # same examples whatever the number of workers.
  if worker_processes:
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (notebooks, tests)
      flags.FLAGS.mark_as_parsed()
    dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
                                      ).mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_processes))
  else:
    threads = min(READER_THREADS, os.cpu_count() or 1)
    dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                        prefetch_buffer_size=threads))
  return iter(dataset)


def train_batches(source: DataSource, global_batch_size: int, seed: int, start_step: int,
                  augmentation: str) -> Iterator[dict[str, np.ndarray]]:
  """This process's training batches from ``start_step`` on, forever (see module docstring)."""
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f'unknown augmentation {augmentation!r}; valid: {list(AUGMENTATIONS)}')
  steps_per_epoch(source, global_batch_size)  # checks the batch size
  transform = TrainTransform(source.image_shape, source.mean, source.std, augmentation,
                             source.resize)
  examples = (grain.MapDataset.source(source.splits['train']).seed(seed % 2**32).shuffle()
              .repeat().random_map(transform))
  return process_batches(examples, global_batch_size, None, start_step,
                         worker_processes=source.worker_processes)


def eval_batches(source: DataSource, split: str, global_batch_size: int,
                 max_examples: int | None = None, keep_dtype: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every example of ``split`` (or its first ``max_examples``) exactly once, in order, in
  global batches of one size.

  ``keep_dtype`` leaves the images as stored (uint8, a quarter of float32's bytes) for batches
  kept on the host, such as the search's held-out split, to be normalised on the device
  (``evaluate.normalized``).

  The last batch is filled up with examples from the split's start whose ``mask`` is 0: real
  images, so that BatchNorm in batch-statistics mode sees a normal batch, but not counted.
  """
  parallel.check_batch_size(global_batch_size, 'the batch size')
  size = source.num_examples[split]
  if max_examples is not None and max_examples < size:
    size = max_examples
  if size < 1:
    raise ValueError(f'{source.name}: the {split} split is empty')
  examples = grain.MapDataset.source(source.splits[split]).map(
      EvalTransform(source.image_shape, source.mean, source.std, source.resize, keep_dtype))
  num_batches = -(-size // global_batch_size)
  # Reader threads, never worker processes: an evaluation is short and starts a new stream each
  # time, and starting grain's workers cost the CIFAR sample's held-out evaluation 9.5 s of 10 on
  # an H200 (runs/accelerator_h200.md). The eval transform is light (no augmentation), and
  # Pillow's JPEG decoding releases the GIL.
  return process_batches(examples, global_batch_size, num_batches, size=size)


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
