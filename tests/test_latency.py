"""Latency measured in the single-threaded worker process.

Times depend on the machine and its load, so no test bounds them: they check that the numbers
exist, that one worker serves many configs, and that errors come back as errors.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest

from autoslim_jax import latency
from autoslim_jax import models
from conftest import REPO

MODEL = 'mobilenet_v2'
KWARGS = dict(layout='cifar', width_mult=0.5, image_size=8, in_channels=1, num_classes=10)


@pytest.fixture(scope='module')
def network():
  return models.create_network(MODEL, **KWARGS)


def test_worker_environment_drops_fake_devices_and_keeps_other_flags():
  env = latency.worker_environment({
      'XLA_FLAGS': '--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x',
      'PYTHONPATH': '/elsewhere', 'JAX_PLATFORMS': 'cuda'})
  assert env['XLA_FLAGS'] == f'--xla_dump_to=/tmp/x {latency.SINGLE_THREAD_FLAGS}'
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert env['PYTHONPATH'].split(os.pathsep) == [REPO, '/elsewhere']


def test_one_worker_measures_configs_and_reports_bad_ones(network):
  space = network.channel_space()
  with latency.LatencyMeter(MODEL, KWARGS, warmup=2, repeats=5) as meter:
    assert meter.pid is None  # started lazily
    times = [meter.measure(space.max_config()), meter.measure(space.min_config())]
    assert all(t > 0 and math.isfinite(t) for t in times), times
    assert len(meter.last_reply['times_ms']) == 5 and meter.last_reply['compile_s'] > 0
    pid = meter.pid
    # the worker sees one CPU device (not the 8 fake ones of this process) and one CPU
    assert meter.worker_info['pid'] == pid and meter.worker_info['devices'] == 1
    assert os.sched_getaffinity(pid) == set(meter.worker_info['cpus'])
    last = network.unit_names[-1]
    with pytest.raises(ValueError, match=f"unit '{last}': channel count 100000 is out of range"):
      meter.measure(dict(space.max_config(), **{last: 100000}))
    with pytest.raises(ValueError, match=r"unknown unit\(s\) \['stem_typo'\]"):
      meter.measure(dict(space.max_config(), stem_typo=8))
    assert meter.pid == pid  # errors leave the worker serving
  assert meter.pid is None


def test_measure_latency_returns_one_time_per_config(network):
  times = latency.measure_latency(MODEL, KWARGS, [network.channel_space().min_config()],
                                  warmup=1, repeats=3)
  assert len(times) == 1 and times[0] > 0 and math.isfinite(times[0])


def test_dead_worker_raises_runtime_error_and_a_new_one_starts():
  with latency.LatencyMeter(MODEL, KWARGS) as meter:
    meter.start()
    pid = meter.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=f'pid {pid}.*exit status -9'):
      meter.measure({})
    meter.start()
    assert meter.pid not in (None, pid)


def test_bad_model_and_arguments_raise_value_error():
  with pytest.raises(ValueError, match="unknown model 'mobilenet_v9'"):
    latency.LatencyMeter('mobilenet_v9', KWARGS).start()
  with pytest.raises(ValueError, match='JSON-serialisable'):
    latency.LatencyMeter(MODEL, dict(KWARGS, dtype=object()))
  with pytest.raises(ValueError, match='repeats must be an integer >= 1, got 0'):
    latency.LatencyMeter(MODEL, KWARGS, repeats=0)


def test_profile_cli_reports_latency():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  args = ['--layout=cifar', '--width=0.5', '--max_width=0.5', '--image_size=8', '--latency']
  result = subprocess.run([sys.executable, '-m', 'autoslim_jax.profile', '--json', *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  latency_ms = json.loads(result.stdout)['latency_ms']
  assert latency_ms > 0 and math.isfinite(latency_ms)
