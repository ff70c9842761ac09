"""Multi-host: two processes (loopback coordinator, 2 CPU devices each) against one process
with the same 4 devices, through ``python -m autoslim_jax.main`` as on a TPU pod."""

import collections
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import REPO, command_env

from autoslim_jax import input_pipeline
from autoslim_jax import search

# Supernet (5 steps of batch 64) and search to a target a few greedy steps below the max; the
# quickstart's MobileNet v1 (14 layers) compiles 3x faster than its MobileNet v2.
RUN = ('--config=configs/quickstart.py', '--config.model=mobilenet_v1',
       '--config.supernet.num_epochs=0.25',
       '--config.supernet.num_sandwich=2', '--config.supernet.log_every_steps=1',
       '--config.search.targets.macs_of_width=(0.45,)', '--config.stages=supernet,search',
       # In float32 this tiny net's BatchNorm over 16 8x8 images turns the 1e-7 differences of
       # summing gradients across processes in another order into percents within 3 steps
       # (measured); in float64 the two runs are equal to the last bit.
       '--config.supernet.compute_dtype=float64')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(args, devices):
  env = dict(command_env(), XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_ENABLE_X64='1')
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process):
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  return stdout, stderr


def restore_params(workdir):
  directory = os.path.join(workdir, 'supernet', 'checkpoints')
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    return step, manager.restore(step, args=ocp.args.StandardRestore())['params']


def test_two_processes_train_and_search_as_one_process_with_their_devices(tmp_path):
  main_port, reads_port = free_port(), free_port()
  multi, single = str(tmp_path / 'two_processes'), str(tmp_path / 'one_process')
  processes = [start(['-m', 'autoslim_jax.main', *RUN, f'--workdir={multi}',
                      f'--coordinator_address=127.0.0.1:{main_port}', '--num_processes=2',
                      f'--process_id={i}'], devices=2) for i in range(2)]
  processes.append(start(['-m', 'autoslim_jax.main', *RUN, f'--workdir={single}'], devices=4))
  processes += [start([os.path.join('tests', 'multihost_reads.py'), str(tmp_path / f'reads{i}'),
                       f'127.0.0.1:{reads_port}', '2', str(i)], devices=2) for i in range(2)]
  (_, log0), (_, log1), (_, single_log), _, _ = [finish(p) for p in processes]

  # Every process trained and searched; only process 0 logged progress.
  assert 'process 0 of 2: 2 of 4 devices (cpu), data shards [0, 1]' in log0
  assert 'search step 1:' in log0 and 'supernet: 5 steps' in log0
  assert 'search step' not in log1 and 'supernet:' not in log1, log1[-2000:]

  # The parameters after training equal one process's with the same 4 devices.
  step, multi_params = restore_params(multi)
  single_step, single_params = restore_params(single)
  assert step == single_step == 5
  flat_multi, flat_single = _flat(multi_params), _flat(single_params)
  assert flat_multi.keys() == flat_single.keys()
  for key, value in flat_multi.items():
    np.testing.assert_allclose(value, flat_single[key], rtol=1e-6, err_msg=key)
  # And the search took the same steps.
  trajectories = [[json.loads(line) for line in open(os.path.join(w, 'search', search.TRAJECTORY_FILE))]
                  for w in (multi, single)]
  assert len(trajectories[0]) >= 2
  assert ([s['unit'] for s in trajectories[0]] == [s['unit'] for s in trajectories[1]])
  np.testing.assert_allclose([s['heldout_accuracy'] for s in trajectories[0]],
                             [s['heldout_accuracy'] for s in trajectories[1]], atol=1e-6)

  # Each process read the shards of its own devices (device d: examples d, d + 4, ...): an
  # epoch of training batches from them only, and each of their held-out examples once.
  arrays = input_pipeline.load_digits_arrays()
  heldout, train = arrays['x_train'][:200], arrays['x_train'][200:]
  for i in range(2):
    read = np.load(tmp_path / f'reads{i}.npz')
    assert list(read['shards']) == [2 * i, 2 * i + 1]
    own_train = _fingerprints(np.concatenate([train[d::4] for d in read['shards']]))
    own_heldout = _fingerprints(np.concatenate([heldout[d::4] for d in read['shards']]))
    seen_train = _fingerprints(read['train_images'])
    seen_heldout = _fingerprints(read['heldout_images'][read['heldout_mask'] == 1])
    assert len(read['train_images']) == 20 * 32  # 1300 // 4 // 16 steps of 32 images
    assert not seen_train - own_train  # its shards only
    assert seen_heldout == own_heldout  # all of them, once


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _fingerprints(images) -> collections.Counter:
  """A multiset of images; normalized ones (floats) are turned back into uint8 first."""
  if images.dtype != np.uint8:  # the pipeline's (x / 255 - 0.5) / 0.25 of 1-channel images
    images = np.round((images * 0.25 + 0.5) * 255).astype(np.uint8)
  return collections.Counter(image.tobytes() for image in images)
