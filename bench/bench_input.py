r"""Input pipeline throughput: images/s of the training batches alone (no model), on one core and
on all of them, for CIFAR-style and ImageNet-style data.

  python bench/bench_input.py                     # both styles, appends to bench/results.md
  python bench/bench_input.py --smoke --results=/tmp/r.md   # tiny sizes (the test suite)

- cifar: 32x32 uint8 arrays in memory (the CIFAR-10 sample of ../shared/data when it is there,
  random images otherwise), pad-4 crop and flip, normalised to float32;
- imagenet: a folder of JPEGs (CIFAR images upscaled to 500x375, ImageNet's typical size, at
  quality 90; smooth random images without the sample), decoded, Inception-cropped to 224x224,
  flipped and normalised.

Each is read through ``input_pipeline.train_batches`` as training does, in three set-ups: one
reader thread (one core), reader threads on every core (``dataset.worker_processes=0``), and one
grain worker process per core. An accelerator needs ``its step's images/s / per-core images/s``
host cores to never wait for input (README, Performance).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import PIL.Image  # pylint: disable=g-import-not-at-top,wrong-import-position

import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data',
                      'cifar10_subset.npz')


def cifar_images(count: int) -> tuple[np.ndarray, np.ndarray, str]:
  if os.path.exists(SAMPLE):
    with np.load(SAMPLE) as data:
      images, labels = data['x_train'], data['y_train']
    reps = -(-count // len(images))
    return np.tile(images, (reps, 1, 1, 1))[:count], np.tile(labels, reps)[:count], 'CIFAR-10'
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (count, 32, 32, 3), np.uint8), rng.integers(0, 10, count),
          'random')


def write_jpeg_folder(root: str, count: int, size: tuple[int, int]) -> str:
  """``count`` JPEGs of ``size`` (width, height) in root/{train,test}/CLASS/; what they show."""
  images, labels, kind = cifar_images(count)
  if kind == 'random':  # smooth, as photos are: noise would make JPEGs unrealistically large
    images = np.asarray([np.asarray(PIL.Image.fromarray(i).resize((4, 4)).resize((32, 32)))
                         for i in images])
  for split in ('train', 'test'):
    for i, (image, label) in enumerate(zip(images, labels)):
      if split == 'test' and i >= 10:
        break
      folder = os.path.join(root, split, f'class{label}')
      os.makedirs(folder, exist_ok=True)
      PIL.Image.fromarray(image).resize(size, PIL.Image.BICUBIC).save(
          os.path.join(folder, f'{i}.jpg'), quality=90)
  return f'{kind} images upscaled to {size[0]}x{size[1]} JPEGs'


def measure(source, batch_size: int, augmentation: str, batches: int) -> tuple[float, float]:
  """(images/s over ``batches`` batches after the first, seconds to the first batch)."""
  start = time.perf_counter()
  stream = input_pipeline.train_batches(source, batch_size, 0, 0, augmentation)
  next(stream)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(stream)
  return batches * batch_size / (time.perf_counter() - start), first


def run_style(style: str, data_config, batch_size: int, batches: int, setting: str,
              results: str) -> None:
  cores = os.cpu_count() or 1
  lines = []
  for name, workers, threads in (('1 reader thread', 0, 1), (f'{cores} reader threads', 0, cores),
                                 (f'{cores} worker processes', cores, 1)):
    input_pipeline.READER_THREADS = threads  # what one core / every core can do
    data_config.worker_processes = workers
    source = input_pipeline.create_source(data_config)
    rate, first = measure(source, batch_size, data_config.augmentation, batches)
    lines.append(common.row(
        f'input pipeline, {style}', f'{setting}, batch {batch_size}, {batches} batches, {name}',
        f'{rate:,.0f} images/s ({rate / (1 if threads == 1 and not workers else cores):,.0f} '
        f'per core; first batch after {first:.2f} s)',
        packages=('grain', 'numpy', 'PIL')))
  common.append_results(lines, results)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--styles', default='cifar,imagenet')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes: checks the script runs')
  parser.add_argument('--results', default=common.RESULTS_FILE)
  args = parser.parse_args(argv)
  args.smoke = args.smoke or common.SMOKE
  config = defaults.get_default_config().dataset
  for style in args.styles.split(','):
    if style == 'cifar':
      count, batch_size, batches = (64, 8, 2) if args.smoke else (20_000, 256, 40)
      images, labels, kind = cifar_images(count)
      with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'cifar.npz')
        np.savez(path, x_train=images, y_train=labels, x_test=images[:10], y_test=labels[:10])
        config.update(dict(name='npz', path=path, heldout_size=16, augmentation='crop_flip',
                           image_size=0))
        run_style('CIFAR-style', config, batch_size, batches,
                  f'{kind} 32x32 arrays, pad-crop-flip', args.results)
    elif style == 'imagenet':
      count, batch_size, batches = (24, 8, 1) if args.smoke else (1_000, 64, 12)
      with tempfile.TemporaryDirectory() as tmp:
        what = write_jpeg_folder(tmp, count, (500, 375))
        config.update(dict(name='folder', path=tmp, heldout_size=8, augmentation='inception',
                           image_size=32 if args.smoke else 224))
        run_style('ImageNet-style', config, batch_size, batches,
                  f'{what}, decode + Inception crop to {config.image_size}', args.results)
    else:
      raise SystemExit(f'unknown style {style!r}; valid: cifar, imagenet')


if __name__ == '__main__':
  main()
