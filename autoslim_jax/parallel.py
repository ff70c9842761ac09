"""The device mesh, the data shard of each device, and moving host batches onto the mesh.

Devices are ordered process by process (then by id): device ``d`` of the mesh reads data shard
``d`` of ``jax.device_count()``, and a process reads the shards of its own devices. A global
batch is therefore the same whether 4 devices sit in one process or in two, and a run is
reproduced on any split of the same devices over hosts.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def ordered_devices() -> list[jax.Device]:
  # Process-major: each process's devices are one contiguous block of the data axis, the layout
  # make_array_from_process_local_data expects. (A psum over every device is the same collective
  # in any order, so nothing is lost against a topology-aware order.)
  return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def make_mesh() -> Mesh:
  """One data-parallel axis over every device of every process."""
  return Mesh(np.array(ordered_devices()), (DATA_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def local_shards() -> list[int]:
  """The data shards this process reads: the mesh positions of its devices, in order."""
  return [i for i, d in enumerate(ordered_devices()) if d.process_index == jax.process_index()]


def check_batch_size(batch_size: int, what: str) -> None:
  if batch_size % jax.device_count():
    raise ValueError(f'{what} {batch_size} is not divisible by the {jax.device_count()} devices; '
                     f'use a multiple of {jax.device_count()}')


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's part of a global batch -> global arrays split over the data axis."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def settle(tree):
  """``tree`` once computed, on XLA:CPU with several (fake) devices; as it is elsewhere.

  There each device's program runs on one shared thread pool, and two programs with
  collectives in flight at once can deadlock it (seen with the evaluation's BatchNorm
  all-reduces: 7 of 8 devices waiting for an 8th that never gets a thread). Waiting for every
  such program before the next one starts avoids it; accelerators keep dispatching ahead.
  """
  if jax.default_backend() == 'cpu' and jax.device_count() > 1:
    jax.block_until_ready(tree)
  return tree


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def to_host(tree):
  """Numpy copies of global arrays, also of those split over other processes' devices."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def is_main_process() -> bool:
  """The process that writes the run's files and logs (every process computes the same)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process gets here (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def broadcast_from_main(value: float) -> float:
  """The main process's ``value`` on every process (host measurements, like latency, differ)."""
  if jax.process_count() == 1:
    return value
  return float(multihost_utils.broadcast_one_to_all(np.float32(value)))
