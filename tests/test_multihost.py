"""Multi-host: two processes (loopback coordinator, 2 CPU devices each) against one process
with the same 4 devices, through ``python -m autoslim_jax.main`` as on a TPU pod."""

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

  # Each process read its devices' slices of every global batch: process i, with mesh
  # positions 2i and 2i + 1, the i-th half; together exactly the batches one process reads.
  config = quickstart_config()
  source = input_pipeline.create_source(config.dataset)
  steps = input_pipeline.steps_per_epoch(source, config.supernet.batch_size)
  train = input_pipeline.train_batches(source, config.supernet.batch_size, config.seed, 0,
                                       config.dataset.augmentation)
  whole_train = np.stack([next(train)['image'] for _ in range(steps)])
  heldout = list(input_pipeline.eval_batches(source, 'heldout', config.search.batch_size))
  whole_heldout = np.stack([b['image'] for b in heldout])
  whole_mask = np.stack([b['mask'] for b in heldout])
  for i in range(2):
    read = np.load(tmp_path / f'reads{i}.npz')
    assert list(read['shards']) == [2 * i, 2 * i + 1]
    half = slice(i * whole_train.shape[1] // 2, (i + 1) * whole_train.shape[1] // 2)
    np.testing.assert_array_equal(read['train_images'].reshape(whole_train[:, half].shape),
                                  whole_train[:, half])
    half = slice(i * whole_heldout.shape[1] // 2, (i + 1) * whole_heldout.shape[1] // 2)
    np.testing.assert_array_equal(read['heldout_images'].reshape(whole_heldout[:, half].shape),
                                  whole_heldout[:, half])
    np.testing.assert_array_equal(read['heldout_mask'].reshape(whole_mask[:, half].shape),
                                  whole_mask[:, half])


def quickstart_config():
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import quickstart  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return quickstart.get_config()


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
