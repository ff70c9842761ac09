"""Checkpoint saves of a replicated supernet train state: orbax given the device arrays, against
orbax given host copies (what ``train.Checkpoints.save`` does).

  python bench/bench_checkpoint.py

The state is the CIFAR MobileNet v2 1.5x supernet's params, batch statistics and a momentum
copy of the params, replicated over 8 devices (8 fake CPU devices on a host without
accelerators). Prints the machine, versions and the median of repeated saves (each waits until
the checkpoint is on disk) after one warm-up save, and appends a line to bench/results.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
from autoslim_jax import models  # pylint: disable=wrong-import-position
from autoslim_jax import parallel  # pylint: disable=wrong-import-position
from autoslim_jax import train  # pylint: disable=wrong-import-position

REPEATS = 1 if common.SMOKE else 5


def median_save_seconds(tree, directory: str) -> float:
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      max_to_keep=2, create=True))
  times = []
  for step in range(REPEATS + 1):
    start = time.perf_counter()
    manager.save(step, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    times.append(time.perf_counter() - start)
  manager.close()
  return statistics.median(times[1:])


def main() -> None:
  network = models.create_network('mobilenet_v2', layout='cifar',
                                  **(dict(width_mult=0.35, image_size=8) if common.SMOKE
                                     else dict(width_mult=1.5)))
  variables = jax.device_get(network.init(jax.random.key(0)))
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'momentum': variables['params'], 'step': np.int32(0)}
  mesh = parallel.make_mesh()
  replicated = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  leaves = jax.tree_util.tree_leaves(state)
  megabytes = sum(np.asarray(x).nbytes for x in leaves) / 2**20
  with tempfile.TemporaryDirectory() as root:
    device_s = median_save_seconds(replicated, os.path.join(root, 'device'))
    host_s = median_save_seconds(jax.tree_util.tree_map(train._host_copy, replicated),  # pylint: disable=protected-access
                                 os.path.join(root, 'host'))
  common.append_results([common.row(
      'checkpoint save, replicated state', f'CIFAR MobileNet v2 1.5x supernet state, '
      f'{len(leaves)} arrays, {megabytes:.1f} MiB, median of {REPEATS}',
      f'device arrays {device_s:.2f} s, host copies {host_s:.2f} s: {device_s / host_s:.1f}x '
      'faster', ('jax', 'orbax.checkpoint', 'numpy'))])

if __name__ == '__main__':
  main()
