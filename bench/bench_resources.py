r"""Resource-model throughput: configs evaluated per second (the greedy search's need).

  python bench/bench_resources.py [--configs=10000] [--repeats=7]

Prints machine, versions and the median over repeats; appends a line to bench/results.md.
Needs jax, flax and numpy only.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from autoslim_jax import models  # pylint: disable=wrong-import-position
from autoslim_jax.resources import ResourceModel  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', type=int, default=100 if common.SMOKE else 10000)
  parser.add_argument('--repeats', type=int, default=1 if common.SMOKE else 7)
  args = parser.parse_args()
  network = models.create_network('mobilenet_v2')
  space = network.channel_space()
  start = time.perf_counter()
  resources = ResourceModel(network)  # traces the network once for its layer table
  setup_s = time.perf_counter() - start
  keys = jax.random.split(jax.random.key(0), args.configs)
  sampled = jax.jit(jax.vmap(space.sample))(keys)
  matrix = np.stack([np.asarray(sampled[n]) for n in space.unit_names], axis=1)
  _, times = common.timed(lambda: resources.batch(matrix), args.repeats, warmup=0)
  rate = args.configs / common.median(times)
  common.append_results([common.row(
      'resources, MobileNet v2 1.5x ImageNet', f'{args.configs} configs, median of {args.repeats}',
      f'{rate:,.0f} configs/s (layer table set-up {setup_s:.2f}s)')])

if __name__ == '__main__':
  main()
