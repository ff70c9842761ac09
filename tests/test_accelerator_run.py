"""The accelerator command (bench/accelerator_run.py) at tiny sizes, on the CPU: end to end, and
cut by its deadline.

Its own file: the suite's two workers take files whole, and these are among the longest tests.
"""

import json
import os
import subprocess
import sys
import time

from conftest import REPO, command_env

sys.path.insert(0, os.path.join(REPO, 'bench'))
import accelerator_run  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(out, *args):
  start = time.monotonic()
  result = subprocess.run([sys.executable, os.path.join('bench', 'accelerator_run.py'), str(out),
                           '--smoke', *args], cwd=REPO, env=command_env(), capture_output=True,
                          text=True, timeout=900)
  seconds = time.monotonic() - start
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  summary = json.loads((out / 'summary.json').read_text())
  rows = [line for line in (out / 'rows.md').read_text().splitlines() if line.startswith('|')]
  parts = {p['name']: p for p in summary['parts']}
  # Every row measured is in OUT/rows.md and in the summary under the part that measured it.
  assert rows == [row for p in parts.values() for row in p.get('rows', [])
                  + [r for i in p.get('invocations', []) for r in i['rows']]]
  return summary, parts, rows, seconds


def test_accelerator_command_smoke_run(tmp_path):
  """python bench/accelerator_run.py OUT --smoke: every part (the supernet step against
  PyTorch, the search's chunks, the CIFAR-sample experiment with two seeds, one invocation
  each, the ImageNet extra) runs at tiny sizes and lands in OUT; the GPU-only autotuning part
  is skipped on a CPU."""
  out = tmp_path / 'out'
  summary, parts, _, _ = _run(out)
  assert list(parts) == ['supernet_cifar', 'autotune_0', 'search', 'experiment',
                         'supernet_imagenet']
  assert summary['finished'] == ['supernet_cifar', 'search', 'experiment', 'supernet_imagenet']
  assert summary['skipped'] == ['autotune_0'] and not summary['cut'] and not summary['failed']
  assert summary['seconds'] <= summary['deadline_seconds']
  # PyTorch first (no JAX compilation), then JAX with the ratio of the pair.
  cifar = parts['supernet_cifar']['rows']
  assert 'PyTorch slicing' in cifar[0] and 'JAX fused / PyTorch float32 throughput' in cifar[1]
  imagenet = parts['supernet_imagenet']['rows']
  assert 'PyTorch slicing, bf16 autocast, channels-last' in imagenet[0]
  assert 'JAX bfloat16 / PyTorch bf16 throughput' in imagenet[1]
  assert sum('greedy search step' in row for row in parts['search']['rows']) == 2
  # One invocation per seed, the second resuming the first: both seeds in one experiment.
  experiment = parts['experiment']
  assert [i['command'].split('--seeds=')[1] for i in experiment['invocations']] == ['0', '0,1']
  assert experiment['seeds'] == [0, 1]
  assert json.loads((out / 'experiment' / 'summary.json').read_text())['seeds'] == [0, 1]
  assert any((out / 'compilation_cache').iterdir())  # the second seed loaded from it
  assert summary['environment']['versions']['jax']
  assert len(summary['environment']['devices']) == 1  # as on a one-GPU host


def test_a_short_deadline_cuts_the_run_and_keeps_what_was_measured(tmp_path):
  """--deadline=40: the search (seconds) finishes; the experiment (half a minute to a minute
  here) and the ImageNet extra get what is left: each is stopped by the deadline, not started,
  or (the experiment) finishes in time. Whichever way the race goes, the command returns by its
  deadline, the rows measured are kept and the summary says which parts the deadline cut."""
  out = tmp_path / 'out'
  deadline, slack = 40, 10
  summary, parts, rows, seconds = _run(out, '--parts=search,experiment,supernet_imagenet',
                                       f'--deadline={deadline}')
  assert seconds <= deadline + slack and summary['seconds'] <= deadline
  assert summary['skipped'] == ['supernet_cifar', 'autotune_0']
  assert not summary['failed'] and not summary['stopped'] and not summary['running']
  assert summary['finished'][0] == 'search' and parts['search']['rows'] == rows[:2]
  assert all('greedy search step' in row for row in rows[:2])
  assert 'supernet_imagenet' in summary['cut']
  for name in summary['cut']:
    part = parts[name]
    ran = part.get('invocations', [part])[-1] if 'seconds' in part else None
    if ran is None:
      assert 'not started' in part['reason'], part
    else:  # ran until the deadline stopped it, within its limit
      assert 'stopped by the deadline' in ran['reason'], part
      assert ran['seconds'] <= ran['limit_seconds'] + accelerator_run.KILL_GRACE_SECONDS + 1
  if 'experiment' in summary['finished']:
    assert parts['experiment']['seeds'] == [0]


def test_a_part_past_its_limit_is_stopped_with_the_processes_it_started(tmp_path):
  """A part is stopped at its limit with its whole process group (the experiment's and the
  benchmarks' children too), within the grace period."""
  child_pid = tmp_path / 'child.pid'
  code = ('import subprocess, sys, time\n'
          'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])\n'
          f'open({str(child_pid)!r}, "w").write(str(child.pid))\n'
          'print("started", flush=True)\n'
          'time.sleep(60)\n')
  start = time.monotonic()
  returncode, seconds = accelerator_run.run_command(['-c', code], 3.0, str(tmp_path / 'log'),
                                                    dict(os.environ))
  assert returncode is None and 3.0 <= seconds < 3.0 + accelerator_run.KILL_GRACE_SECONDS + 1
  assert time.monotonic() - start < 3.0 + accelerator_run.KILL_GRACE_SECONDS + 1
  assert (tmp_path / 'log').read_text() == 'started\n'
  pid = int(child_pid.read_text())
  for _ in range(50):  # the orphan is reaped by init a moment later
    if not _alive(pid):
      break
    time.sleep(0.1)
  assert not _alive(pid)


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[1][0] != 'Z'  # a zombie has ended
  except FileNotFoundError:
    return False
