r"""Everything an accelerator host should measure, in one command that ends by a deadline.

  python bench/accelerator_run.py OUT [--deadline=570] [--npz=local_data/cifar10_subset.npz]
  python bench/accelerator_run.py OUT --smoke      # the whole command at tiny sizes, on a CPU

A lent accelerator session has 15 minutes of device time and at most 10 minutes a command, and
on the first one (one H200, runs/accelerator_h200.md) compiling took most of the time: 60 s for
the CIFAR supernet step in float32 (over 100 s in bfloat16), 72 s for ImageNet's, 21 s for the
search's scorer. So this is one command that ends by ``--deadline`` seconds from its start
(default 570: 9 minutes 30 seconds, everything counted), running the parts most important
first, each a subprocess given min(its own cap, the time left minus ``RESERVE_SECONDS``). A part
that would get less than it needs to measure anything is not started and is recorded as cut by
the deadline; a part that runs past its limit is stopped (its process group: SIGTERM, then
SIGKILL) and keeps what it measured, since the benchmarks append each row to ``OUT/rows.md``
(``$AUTOSLIM_BENCH_RESULTS``) as soon as it is measured. The parts:

1. ``supernet_cifar``: ``bench_supernet_step.py`` on the CIFAR MobileNet v2 1.5x supernet at
   batch 256: the PyTorch slicing step in float32 and in bf16 autocast with channels-last first
   (no JAX compilation, so their rows come within seconds), then the JAX fused step in float32
   and in bfloat16, each row with its JAX / PyTorch ratio. That PyTorch computes the JAX
   network is checked on the CPU by tests/test_bench.py, not here (it would compile the JAX
   network on the accelerator).
2. ``autotune_0`` (GPU only; XLA's GPU autotuning level does nothing on a CPU): the JAX fused
   float32 step again, in a process with ``XLA_FLAGS=--xla_gpu_autotune_level=0``: compile and
   step time beside part 1's, at XLA's default level (each row names its level).
3. ``search``: ``bench_search.py``, one greedy step of the CIFAR supernet, 25 candidates on
   5,000 held-out images, one candidate per call and in the chunk the search picks from device
   memory (``--chunk_sizes=1,auto``; balanced over the calls: 2 calls of 13, not 20 and 5).
4. ``experiment``: ``python -m autoslim_jax.experiment --config=configs/cifar10_sample_gpu.py``
   on the CIFAR-10 sample (``--npz``), AutoSlim against uniform width, no estimator study,
   in ``OUT/experiment``: one seed per invocation (``--seeds=0``, then ``--seeds=0,1`` resumes
   seed 0, which is done, and adds seed 1, ...) while the time left exceeds the last invocation's
   by ``SEED_MARGIN``; no grain worker processes (``dataset.worker_processes=0``: start-up costs
   more than it saves in runs this short) and compiled programs kept in
   ``OUT/compilation_cache``, so later seeds load them instead of compiling.
5. ``supernet_imagenet``, an extra, only if time is left: the JAX fused step and its PyTorch
   pair on the ImageNet MobileNet v2 1.5x supernet at batch 128.

Writes as it goes: ``OUT/rows.md`` (the benchmark rows, as bench/results.md holds them),
``OUT/PART.log`` (each part's output; the experiment's per invocation), ``OUT/experiment/`` (its
summary.md, summary.json, plots, per-seed records) and ``OUT/summary.json``, rewritten at the
start and after every part and seed: the machine and versions, at the top the parts that
finished, were stopped by their caps, cut by the deadline, failed or were skipped, and per
part its command, status, seconds, limit and rows. Copy the rows into bench/results.md and the
experiment's summary into runs/. ``--smoke`` runs the same command on a CPU at tiny sizes, with
the experiment's two first seeds (tests/test_accelerator_run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_NPZ = os.path.join(REPO, 'local_data', 'cifar10_subset.npz')
DEFAULT_DEADLINE = 570.0
# Kept back from every part's limit: stopping a part (SIGTERM, KILL_GRACE_SECONDS, SIGKILL) and
# writing the summary happen before the deadline.
KILL_GRACE_SECONDS = 3.0
RESERVE_SECONDS = 6.0
# Another seed starts only while the time left exceeds the last invocation's time by this much
# (a factor and seconds): a seed cut by the deadline is time spent for nothing.
SEED_MARGIN = (1.1, 15.0)
EXPERIMENT_SEEDS = 20  # at most; --smoke: 2


@dataclasses.dataclass(frozen=True)
class Part:
  name: str
  args: tuple[str, ...]  # of ``python``, on an accelerator
  smoke_args: tuple[str, ...]  # on a CPU at tiny sizes (AUTOSLIM_BENCH_SMOKE)
  cap: float | None  # seconds (None: the deadline alone)
  least: float  # seconds it needs to measure anything: not started with less
  gpu_only: bool = False
  xla_flags: str = ''  # added to XLA_FLAGS


SUPERNET = ('bench/bench_supernet_step.py', '--repeats=5')
SMOKE_SUPERNET = ('bench/bench_supernet_step.py', '--repeats=1', '--check_torch=no')
EXPERIMENT = ('-m', 'autoslim_jax.experiment', '--config=configs/cifar10_sample_gpu.py',
              '--estimator_path=0', '--estimator_random=0',
              '--config.dataset.worker_processes=0')
# Most important first. Caps from the first H200 run's compile times (docstring): part 1 is
# about 20 s of PyTorch, 70 s of JAX float32 and 120 s of bfloat16.
PARTS = (
    Part('supernet_cifar', SUPERNET + ('--network=cifar', '--batch_sizes=256',
                                       '--variants=fused,bfloat16'),
         SMOKE_SUPERNET + ('--network=cifar', '--variants=fused'), cap=240, least=30),
    Part('autotune_0', SUPERNET + ('--network=cifar', '--batch_sizes=256', '--variants=fused',
                                   '--torch=no'),
         SMOKE_SUPERNET + ('--network=cifar', '--variants=fused', '--torch=no'), cap=120,
         least=45, gpu_only=True, xla_flags='--xla_gpu_autotune_level=0'),
    Part('search', ('bench/bench_search.py', '--images=5000', '--batch_size=1000',
                    '--chunk_sizes=1,auto'), ('bench/bench_search.py', '--chunk_sizes=1,auto'),
         cap=100, least=40),
    Part('experiment', EXPERIMENT, EXPERIMENT, cap=None, least=60),
    Part('supernet_imagenet', SUPERNET + ('--network=imagenet', '--batch_sizes=128',
                                          '--variants=fused'),
         # The bfloat16 pair here in --smoke: every path of part 1, one JAX compilation each.
         SMOKE_SUPERNET + ('--network=imagenet', '--variants=bfloat16'), cap=150, least=60),
)
SMOKE_CAP = 300.0  # each part's in --smoke (the deadline decides, as on an accelerator)
SMOKE_LEAST = 10.0
# --smoke: the experiment with a tiny network and schedule on the tiny stand-in data.
SMOKE_EXPERIMENT = (
    '--config.model=mobilenet_v1',
    '--config.model_kwargs.width_mult=0.35', '--config.model_kwargs.image_size=8',
    '--config.dataset.heldout_size=32',
    '--config.supernet.batch_size=32', '--config.supernet.num_epochs=2',
    '--config.supernet.num_sandwich=2', '--config.supernet.eval_batch_size=32',
    '--config.supernet.eval_every_steps=0', '--config.supernet.compute_dtype=float32',
    '--config.search.batch_size=32', '--config.search.num_images=32',
    '--config.search.targets.macs_of_width=(0.3,)', '--config.calibration.num_images=32',
    '--config.calibration.batch_size=16', '--config.retrain.batch_size=32',
    '--config.retrain.num_epochs=2', '--config.retrain.eval_batch_size=16',
    '--config.supernet.base_learning_rate=0.01', '--config.retrain.base_learning_rate=0.01',
    '--config.retrain.compute_dtype=float32', '--config.groups=5', '--config.min_width=0.07')


class Stopped(Exception):
  """This command received SIGTERM or SIGINT: the running part is stopped, the summary kept."""

  def __init__(self, signum: int):
    super().__init__(f'this command received signal {signum}')
    self.signum = signum


def tiny_npz(path: str) -> str:
  """A stand-in for the CIFAR sample in --smoke: 96 random 8x8 colour images, 10 classes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, 8, 8, 3)).astype(np.uint8)
  labels = np.arange(96) % 10
  np.savez(path, x_train=images[:80], y_train=labels[:80], x_test=images[80:],
           y_test=labels[80:])
  return path


ENVIRONMENT_CODE = '''
import json, os, platform, shutil, subprocess
from importlib import metadata
import jax
versions = {}
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "torch"):
  try: versions[name] = metadata.version(name)
  except metadata.PackageNotFoundError: versions[name] = None
gpu = None
if shutil.which("nvidia-smi"):
  gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                        "--format=csv,noheader"], capture_output=True, text=True,
                       timeout=10).stdout.strip()
devices = jax.devices()
print(json.dumps({"platform": devices[0].platform, "devices": [str(d) for d in devices],
                  "device_kind": devices[0].device_kind, "gpu": gpu, "cores": os.cpu_count(),
                  "python": platform.python_version(), "versions": versions}))
'''


def environment(limit: float, env: dict) -> dict:
  """The machine and versions the parts see (``env``), read in a subprocess (this one imports
  no jax), which holds no device memory (JAX takes 75% of a GPU when it starts, by default) and
  gets ``limit`` s."""
  env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  try:
    result = subprocess.run([sys.executable, '-c', ENVIRONMENT_CODE], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=max(1.0, limit),
                            check=False)
    return json.loads(result.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    return {'error': result.stderr[-2000:]}
  except subprocess.TimeoutExpired:
    return {'error': f'reading the machine and versions took over {limit:.0f} s'}


def stop(process: subprocess.Popen) -> None:
  """SIGTERM to the process's group, SIGKILL after KILL_GRACE_SECONDS."""
  for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
    try:
      os.killpg(process.pid, sig)
    except ProcessLookupError:
      return
    try:
      process.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      pass


def run_command(args: list[str], limit: float, log_path: str, env: dict
                ) -> tuple[int | None, float]:
  """``python *args`` for at most ``limit`` seconds, output to ``log_path``: (its exit status,
  None when it was stopped at the limit; seconds). In its own process group, so that stopping
  it stops whatever it started; a Stopped (this command's SIGTERM) stops it too."""
  start = time.monotonic()
  with open(log_path, 'w') as log:
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT, process_group=0)
    try:
      returncode = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      returncode = None
    finally:
      if process.poll() is None:
        stop(process)
  return returncode, round(time.monotonic() - start, 1)


class Run:
  """The deadline, the summary and the rows of one invocation."""

  def __init__(self, out: str, deadline: float, smoke: bool, start: float):
    self.out, self.deadline, self.smoke, self.start = out, deadline, smoke, start
    self.rows_path = os.path.join(out, 'rows.md')
    self.summary = {'started': datetime.datetime.now().isoformat(timespec='seconds'),
                    'host': platform.node(), 'smoke': smoke, 'deadline_seconds': deadline,
                    'reserve_seconds': RESERVE_SECONDS, 'seconds': 0.0,
                    'environment': None, 'parts': []}
    self.interrupted = None  # the command a signal stopped

  def left(self) -> float:
    return self.deadline - (time.monotonic() - self.start)

  def rows(self) -> list[str]:
    if not os.path.exists(self.rows_path):
      return []
    with open(self.rows_path) as f:
      return [line for line in f.read().splitlines() if line.startswith('|')]

  def write(self) -> None:
    """OUT/summary.json, atomically, with the parts by status at the top."""
    self.summary['seconds'] = round(time.monotonic() - self.start, 1)
    for status in ('finished', 'stopped', 'cut', 'failed', 'skipped', 'running', 'pending'):
      self.summary[status] = [p['name'] for p in self.summary['parts'] if p['status'] == status]
    path = os.path.join(self.out, 'summary.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(self.summary, f, indent=1)
    os.replace(path + '.tmp', path)

  def limit(self, cap: float | None) -> tuple[float, bool]:
    """(seconds a part may run now, whether the deadline rather than its cap sets them)."""
    by_deadline = self.left() - RESERVE_SECONDS
    return (by_deadline, True) if cap is None or by_deadline < cap else (cap, False)

  def execute(self, args: list[str], limit: float, by_deadline: bool, log_name: str,
              env: dict) -> dict:
    """Runs one command of a part; returns what it did (status, seconds, rows). Stopped by
    this command's signal, it leaves that in ``self.interrupted`` (with the rows measured)."""
    rows_before = len(self.rows())
    result = {'command': ' '.join(['python'] + args), 'log': log_name,
              'limit_seconds': round(limit, 1)}
    start = time.monotonic()
    try:
      returncode, seconds = run_command(args, limit, os.path.join(self.out, log_name), env)
    except Stopped as e:
      self.interrupted = dict(result, status='cut', reason=str(e), returncode=None,
                              seconds=round(time.monotonic() - start, 1),
                              rows=self.rows()[rows_before:])
      raise
    status = ('finished' if returncode == 0 else 'failed' if returncode is not None
              else 'cut' if by_deadline else 'stopped')
    result.update(status=status, seconds=seconds, returncode=returncode,
                  rows=self.rows()[rows_before:])
    if status == 'cut':
      result['reason'] = f'stopped by the deadline after {seconds:.0f} s'
    elif status == 'stopped':
      result['reason'] = f'stopped at its cap of {limit:.0f} s'
    return result


def part_env(base: dict, part: Part) -> dict:
  if not part.xla_flags:
    return base
  return dict(base, XLA_FLAGS=f'{base.get("XLA_FLAGS", "")} {part.xla_flags}'.strip())


def run_benchmark(run: Run, part: Part, record: dict, env: dict) -> None:
  cap = SMOKE_CAP if run.smoke else part.cap
  limit, by_deadline = run.limit(cap)
  least = SMOKE_LEAST if run.smoke else part.least
  if limit < least:
    record.update(status='cut', reason=f'not started: {max(0.0, limit):.0f} s left of the '
                  f'{least:.0f} s it needs')
    return
  args = list(part.smoke_args if run.smoke else part.args)
  record.update(run.execute(args, limit, by_deadline, f'{part.name}.log', part_env(env, part)))


def experiment_seeds(workdir: str) -> list[int]:
  path = os.path.join(workdir, 'summary.json')
  try:
    with open(path) as f:
      return list(json.load(f).get('seeds', []))
  except (OSError, json.JSONDecodeError):
    return []


def run_experiment(run: Run, part: Part, record: dict, env: dict, npz: str,
                   max_seeds: int) -> None:
  """One invocation per seed, each adding the next seed, while the time left allows."""
  workdir = os.path.join(run.out, 'experiment')
  common_args = list(part.args) + [
      f'--workdir={workdir}', f'--npz={npz}',
      f'--config.compilation.cache_dir={os.path.join(run.out, "compilation_cache")}'] + (
          list(SMOKE_EXPERIMENT) if run.smoke else [])
  record.update(invocations=[], seeds=[])
  last = None  # the last invocation's seconds
  for count in range(1, max_seeds + 1):
    limit, by_deadline = run.limit(part.cap)
    need = ((SMOKE_LEAST if run.smoke else part.least) if last is None
            else last * SEED_MARGIN[0] + SEED_MARGIN[1])
    if limit < need:
      record['reason'] = (f'seed {count - 1} not started: {max(0.0, limit):.0f} s left, '
                          f'{need:.0f} s needed' + ('' if last is None else
                                                    f' (the last invocation took {last:.0f} s)'))
      break
    seeds = ','.join(str(s) for s in range(count))
    result = run.execute(common_args + [f'--seeds={seeds}'], limit, by_deadline,
                         f'experiment_seed{count - 1}.log', env)
    record['invocations'].append(result)
    record['seconds'] = round(sum(r['seconds'] for r in record['invocations']), 1)
    record['seeds'] = experiment_seeds(workdir)
    if result['status'] != 'finished':
      record['reason'] = f'seed {count - 1}: {result.get("reason", result["status"])}'
      break
    last = result['seconds']
    run.write()
  else:
    record['reason'] = f'all {max_seeds} seeds of --max_seeds'
  # Finished when a seed finished (a later seed cut by the deadline is noted in the reason),
  # unless an invocation failed.
  outcome = record['invocations'][-1]['status'] if record['invocations'] else 'cut'
  record['status'] = 'finished' if record['seeds'] and outcome != 'failed' else outcome
  if record['seeds']:
    record['experiment_summary'] = os.path.join('experiment', 'summary.md')


def main(argv=None) -> int:
  run_start = time.monotonic()  # the deadline counts from here
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('out', help='output folder (created)')
  parser.add_argument('--deadline', type=float, default=DEFAULT_DEADLINE,
                      help='seconds from the start by which the command has ended, every part '
                      'and the summary included')
  parser.add_argument('--npz', default=DEFAULT_NPZ,
                      help='the CIFAR-10 sample (copy ../shared/data/cifar10_subset.npz into '
                      'the git-ignored local_data/ of the checkout)')
  parser.add_argument('--parts', default=','.join(p.name for p in PARTS),
                      help='the parts to run, of those listed above (in their order)')
  parser.add_argument('--max_seeds', type=int, default=0,
                      help=f'experiment seeds at most (default {EXPERIMENT_SEEDS}; 2 with '
                      '--smoke)')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, on a CPU')
  args = parser.parse_args(argv)
  wanted = args.parts.split(',')
  unknown = sorted(set(wanted) - {p.name for p in PARTS})
  if unknown:
    parser.error(f'unknown --parts {unknown}; valid: {[p.name for p in PARTS]}')
  os.makedirs(args.out, exist_ok=True)
  out = os.path.abspath(args.out)
  npz = tiny_npz(os.path.join(out, 'tiny.npz')) if args.smoke else os.path.abspath(args.npz)
  if 'experiment' in wanted and not os.path.exists(npz):
    parser.error(f'--npz {npz} does not exist: copy ../shared/data/cifar10_subset.npz there')
  max_seeds = args.max_seeds or (2 if args.smoke else EXPERIMENT_SEEDS)

  run = Run(out, args.deadline, args.smoke, run_start)
  env = dict(os.environ, AUTOSLIM_BENCH_RESULTS=run.rows_path, PYTHONUNBUFFERED='1')
  if args.smoke:
    # One CPU device, as the one-GPU host has (8 fake ones compile a third slower). The numbers
    # mean nothing; on a loaded 2-core machine PyTorch's threads waited on each other for
    # seconds a step.
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count=')]
    env.update(AUTOSLIM_BENCH_SMOKE='1', OMP_NUM_THREADS='1', JAX_PLATFORMS='cpu',
               XLA_FLAGS=' '.join(flags + ['--xla_force_host_platform_device_count=1']))
  records = [{'name': p.name, 'status': 'pending' if p.name in wanted else 'skipped',
              **({} if p.name in wanted else {'reason': 'not in --parts'})} for p in PARTS]
  run.summary['parts'] = records
  run.write()

  def stopped(signum, frame):
    del frame
    raise Stopped(signum)

  previous = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    run.summary['environment'] = environment(min(60.0, run.left() - RESERVE_SECONDS), env)
    on_cpu = run.summary['environment'].get('platform', 'cpu') == 'cpu'
    run.write()
    for part, record in zip(PARTS, records):
      if record['status'] == 'skipped':
        continue
      record['status'] = 'running'
      run.write()
      if part.gpu_only and on_cpu:
        record.update(status='skipped', reason='GPU only (XLA\'s GPU flags do nothing here)')
      elif part.name == 'experiment':
        run_experiment(run, part, record, env, npz, max_seeds)
      else:
        run_benchmark(run, part, record, env)
      print(f'{part.name}: {record["status"]}, {record.get("seconds", 0)} s, '
            f'{len(record.get("rows", []))} rows'
            + (f' ({record["reason"]})' if record.get('reason') else ''), flush=True)
      run.write()
  except Stopped as e:
    for record in records:
      if record['status'] == 'running' and run.interrupted:  # what it measured is kept
        if 'invocations' in record:
          record['invocations'].append(run.interrupted)
        else:
          record.update(run.interrupted)
      if record['status'] in ('running', 'pending'):
        record.update(status='cut', reason=str(e))
    run.write()
    print(f'{e}: stopped', flush=True)
    return 128 + e.signum
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  run.write()
  summary = run.summary
  print(f'summary: {os.path.join(out, "summary.json")} ({summary["seconds"]} s of the '
        f'{args.deadline:.0f} s deadline); finished: {summary["finished"]}; cut by the '
        f'deadline: {summary["cut"]}' + (f'; stopped by their caps: {summary["stopped"]}'
                                          if summary['stopped'] else '')
        + (f'; failed: {summary["failed"]}' if summary['failed'] else ''), flush=True)
  return 1 if summary['failed'] else 0


if __name__ == '__main__':
  sys.exit(main())
