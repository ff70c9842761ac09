r"""Resource-model throughput: configs evaluated per second (the greedy search's need).

  python bench/bench_resources.py [--configs=10000] [--repeats=7]

Prints machine, versions and the median over repeats; appends a line to bench/results.md.
Needs jax, flax and numpy only.
"""

import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from autoslim_jax import models  # pylint: disable=wrong-import-position
from autoslim_jax.resources import ResourceModel  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', type=int, default=10000)
  parser.add_argument('--repeats', type=int, default=7)
  args = parser.parse_args()
  network = models.create_network('mobilenet_v2')
  space = network.channel_space()
  start = time.perf_counter()
  resources = ResourceModel(network)  # traces the network once for its layer table
  setup_s = time.perf_counter() - start
  keys = jax.random.split(jax.random.key(0), args.configs)
  sampled = jax.jit(jax.vmap(space.sample))(keys)
  matrix = np.stack([np.asarray(sampled[n]) for n in space.unit_names], axis=1)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    resources.batch(matrix)
    times.append(time.perf_counter() - start)
  rate = args.configs / float(np.median(times))
  machine = f'{platform.node()} {platform.machine()} {os.cpu_count()} cores'
  line = (f'| {datetime.date.today()} | resources, MobileNet v2 1.5x ImageNet | {machine} | '
          f'jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__} | '
          f'{args.configs} configs, median of {args.repeats} | {rate:,.0f} configs/s '
          f'(layer table set-up {setup_s:.2f}s) | `python bench/bench_resources.py` |')
  print(line)
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results.md'), 'a') as f:
    f.write(line + '\n')


if __name__ == '__main__':
  main()
