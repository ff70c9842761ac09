r"""Greedy-search throughput: candidate evaluations per second, vmapped chunks vs one at a time.

  python bench/bench_search.py                                   # CPU-sized held-out split
  python bench/bench_search.py --images=5000 --batch_size=1000   # the CIFAR config's search

One greedy step of the CIFAR MobileNet v2 1.5x supernet (the paper's): every candidate of the
first step (each unit one group narrower than the max config) scored on ``--images`` held-out
images in batches of ``--batch_size`` (BatchNorm in batch-statistics mode), with
``evaluate.score_configs`` as the search runs it, at chunk sizes 1 (one candidate per call: one
at a time), 4, 8, 16 and all candidates in one call (``--chunk_sizes``; ``auto``: what the
search picks from the device's memory, balanced over the calls: room for 20 of 25 candidates
gives 2 calls of 13). Prints and appends to bench/results.md,
per chunk size: compile time (no persistent cache), candidate evaluations per second and images
per second (candidates x images / time) as the median of ``--repeats`` passes after a warm-up,
and the speed-up over one at a time. The weights are a fresh initialisation: throughput does
not depend on them.

Needs jax, flax, optax and numpy. Uses every local device (data parallel over the images).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import search  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_CHUNK_SIZES = '1,auto' if common.SMOKE else '1,4,8,16,0'  # 0: all in one call


def heldout_batches(network, images: int, batch_size: int) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  return [{'image': rng.normal(size=(batch_size,) + network.input_shape).astype(np.float32),
           'label': rng.integers(0, network.num_classes, batch_size).astype(np.int32),
           'mask': np.ones(batch_size, np.float32)} for _ in range(images // batch_size)]


def chunk_size_of(text: str, network, batch_size: int, num_candidates: int) -> int:
  """``--chunk_sizes`` entry: a number, 0 for all candidates, or ``auto`` for what the search's
  ``search.chunk_size=0`` picks from the device's memory (all of them on a CPU)."""
  if text == 'auto':
    return search.automatic_chunk_size(network, batch_size, num_candidates)
  return int(text) or num_candidates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=0,
                      help='held-out images (default: 64 on CPU, 5000 on an accelerator)')
  parser.add_argument('--batch_size', type=int, default=0,
                      help='BatchNorm batch (default: 64 on CPU, 1000 on an accelerator)')
  parser.add_argument('--chunk_sizes', default=DEFAULT_CHUNK_SIZES,
                      help='comma-separated candidates per call; 0 = all, auto = as the '
                      'search picks from device memory')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  on_cpu = jax.default_backend() == 'cpu'
  images = args.images or (16 if common.SMOKE else 64 if on_cpu else 5000)
  batch_size = args.batch_size or (16 if common.SMOKE else 64 if on_cpu else 1000)
  if images % batch_size or batch_size % jax.device_count():
    parser.error(f'--images {images} must be a multiple of --batch_size {batch_size}, and that '
                 f'of the {jax.device_count()} devices')

  network = models.create_network('mobilenet_v2', layout='cifar',
                                  **(dict(width_mult=0.35, image_size=8) if common.SMOKE
                                     else dict(width_mult=1.5)))
  space = network.channel_space()
  mesh = parallel.make_mesh()
  variables = parallel.replicate(network.init(jax.random.key(0)), mesh)
  configs = [config for _, config in space.slimming_candidates(space.max_config())]
  batches = heldout_batches(network, images, batch_size)
  print(f'{common.machine()}: {len(configs)} candidates x {images} images', flush=True)

  one_at_a_time = None
  for chunk_size in [chunk_size_of(c, network, batch_size, len(configs))
                     for c in args.chunk_sizes.split(',')]:
    scorer = evaluate.make_candidate_scorer(network.supernet(), mesh)
    start = time.perf_counter()
    evaluate.score_configs(scorer, variables, batches[:1], configs[:chunk_size], space,
                           chunk_size, mesh)
    compile_s = time.perf_counter() - start
    # The call above compiled; timed's first (untimed) pass is the warm-up.
    _, times = common.timed(
        lambda size=chunk_size: evaluate.score_configs(scorer, variables, batches, configs,
                                                       space, size, mesh), args.repeats,
        warmup=0)
    seconds = common.median(times)
    print(f'chunk {chunk_size}: compile {compile_s:.1f} s, {seconds:.2f} s per step', flush=True)
    if chunk_size == 1:
      one_at_a_time = seconds
    speedup = f'; {one_at_a_time / seconds:.2f}x one at a time' if one_at_a_time else ''
    # Each chunk's row as soon as it is measured: a run stopped at its time cap keeps them.
    common.append_results([common.row(
        f'greedy search step, chunk {chunk_size}' + (' (all)' if chunk_size == len(configs)
                                                      else ''),
        f'CIFAR MobileNet v2 1.5x, {len(configs)} candidates x {images} held-out images, '
        f'batch {batch_size}, median of {args.repeats}',
        f'{len(configs) / seconds:,.2f} candidates/s, {len(configs) * images / seconds:,.0f} '
        f'images/s ({seconds:.2f} s per step; compile {compile_s:.1f} s){speedup}',
        ('jax', 'flax', 'numpy'))])

if __name__ == '__main__':
  main()
