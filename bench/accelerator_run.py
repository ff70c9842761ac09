r"""Everything an accelerator host should measure, in two commands of at most 10 minutes.

  python bench/accelerator_run.py OUT --parts=experiment [--npz=cifar10_subset.npz] [--seed=0]
  python bench/accelerator_run.py OUT --parts=supernet_cifar,search,supernet_imagenet
  python bench/accelerator_run.py OUT --smoke      # the whole path at tiny sizes, on a CPU

Parts, each a subprocess with its own time cap (a part that runs over is stopped, and what it
finished is kept: the benchmarks append each row as soon as it is measured), in this order:

1. ``experiment``: ``python -m autoslim_jax.experiment --config=configs/cifar10_sample_gpu.py``
   on the CIFAR-10 sample (``--npz``), one seed (``--seed``) per invocation, without the
   estimator study: AutoSlim against uniform width. Its workdir is ``OUT/experiment``: run again
   with the same OUT and another seed, and the summary covers every seed recorded there. It keeps
   compiled programs in ``OUT/compilation_cache`` so that a rerun on the same machine resumes
   without compiling again.
2. ``supernet_cifar``, ``supernet_imagenet``: ``bench_supernet_step.py`` on the CIFAR (batch 256)
   and ImageNet (batch 128) MobileNet v2 1.5x supernets: the JAX fused step against the PyTorch
   slicing step, images/s, compile time, MACs/s against the measured matrix-product peak, the
   JAX / PyTorch ratio;
3. ``search``: ``bench_search.py``, one greedy step of the CIFAR supernet, 25 candidates on
   5,000 held-out images, one at a time and in the chunk the search picks from device memory.

The caps come from the first run on an H200 (runs/accelerator_h200.md), where compiling took
most of the time: 60 s for the CIFAR supernet step in float32 (about 120 s in bfloat16), 72 s
for ImageNet's, 21 s for the search's scorer. A lent session has 15 minutes of device time:
the experiment fills the first command (9.5 minutes), the benchmarks the second (5 minutes).

Writes as it goes: ``OUT/rows.md`` (the benchmark rows, as bench/results.md holds them),
``OUT/summary.json`` (machine, versions, and per part its command, seconds, exit status,
whether it was stopped, and its rows; rewritten after every part), ``OUT/PART.log`` (each
part's output) and ``OUT/experiment/`` (the experiment's records: summary.md, summary.json,
plots). Copy the rows into bench/results.md and the experiment's summary into runs/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_NPZ = os.path.join(REPO, 'local_data', 'cifar10_subset.npz')

# (name, command, seconds allowed): the experiment's command and the benchmarks' command each
# end within the device tool's 10 minutes.
PARTS = (
    ('experiment', ['-m', 'autoslim_jax.experiment', '--config=configs/cifar10_sample_gpu.py',
                    '--estimator_path=0', '--estimator_random=0'], 560),
    ('supernet_cifar', ['bench/bench_supernet_step.py', '--network=cifar',
                        '--batch_sizes=256', '--variants=fused', '--repeats=5'], 110),
    ('search', ['bench/bench_search.py', '--images=5000', '--batch_size=1000',
                '--chunk_sizes=1,auto'], 75),
    ('supernet_imagenet', ['bench/bench_supernet_step.py', '--network=imagenet',
                           '--batch_sizes=128', '--variants=fused', '--repeats=5'], 110),
)
# --smoke: the same commands on a CPU at tiny sizes (the benchmarks' AUTOSLIM_BENCH_SMOKE; the
# experiment with a tiny network and schedule), each with room to compile.
SMOKE_EXPERIMENT = (
    '--config.model=mobilenet_v1',
    '--config.model_kwargs.width_mult=0.35', '--config.model_kwargs.image_size=8',
    '--config.dataset.heldout_size=32', '--config.dataset.worker_processes=0',
    '--config.supernet.batch_size=32', '--config.supernet.num_epochs=2',
    '--config.supernet.num_sandwich=2', '--config.supernet.eval_batch_size=32',
    '--config.supernet.eval_every_steps=0', '--config.supernet.compute_dtype=float32',
    '--config.search.batch_size=32', '--config.search.num_images=32',
    '--config.search.targets.macs_of_width=(0.3,)', '--config.calibration.num_images=32',
    '--config.calibration.batch_size=16', '--config.retrain.batch_size=32',
    '--config.retrain.num_epochs=2', '--config.retrain.eval_batch_size=16',
    '--config.supernet.base_learning_rate=0.01', '--config.retrain.base_learning_rate=0.01',
    '--config.retrain.compute_dtype=float32', '--config.groups=5', '--config.min_width=0.07')


def tiny_npz(path: str) -> str:
  """A stand-in for the CIFAR sample in --smoke: 96 random 8x8 colour images, 10 classes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, 8, 8, 3)).astype(np.uint8)
  labels = np.arange(96) % 10
  np.savez(path, x_train=images[:80], y_train=labels[:80], x_test=images[80:],
           y_test=labels[80:])
  return path


def environment() -> dict:
  """The machine and versions, read in a subprocess (this one imports no jax)."""
  code = ('import importlib, json, os, platform, jax\n'
          'versions = {}\n'
          'for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "numpy",'
          ' "torch"):\n'
          '  try: versions[name] = importlib.import_module(name).__version__\n'
          '  except Exception: versions[name] = None\n'
          'print(json.dumps({"devices": [str(d) for d in jax.devices()],'
          ' "device_kind": jax.devices()[0].device_kind, "cores": os.cpu_count(),'
          ' "python": platform.python_version(), "versions": versions}))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
  try:
    return json.loads(result.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    return {'error': result.stderr[-2000:]}


def run_part(name: str, args: list[str], cap: float, out: str, env: dict) -> dict:
  """Runs one part for at most ``cap`` seconds; its output goes to OUT/NAME.log."""
  rows_path = env['AUTOSLIM_BENCH_RESULTS']
  rows_before = open(rows_path).read().splitlines() if os.path.exists(rows_path) else []
  command = [sys.executable, *args]
  start = time.perf_counter()
  with open(os.path.join(out, f'{name}.log'), 'w') as log:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      returncode, timed_out = process.wait(timeout=cap), False
    except subprocess.TimeoutExpired:
      process.terminate()
      try:
        process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      returncode, timed_out = None, True
  rows = open(rows_path).read().splitlines() if os.path.exists(rows_path) else []
  return {'name': name, 'command': ' '.join(['python'] + args), 'cap_seconds': cap,
          'seconds': round(time.perf_counter() - start, 1), 'returncode': returncode,
          'timed_out': timed_out, 'rows': rows[len(rows_before):]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('out', help='output folder (created; a rerun adds to it)')
  parser.add_argument('--npz', default=DEFAULT_NPZ,
                      help='the CIFAR-10 sample (copy ../shared/data/cifar10_subset.npz into '
                      'the git-ignored local_data/ of the checkout)')
  parser.add_argument('--seed', type=int, default=0, help='the experiment seed of this run')
  parser.add_argument('--parts', default=','.join(p[0] for p in PARTS))
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, on a CPU')
  args = parser.parse_args(argv)
  wanted = args.parts.split(',')
  unknown = sorted(set(wanted) - {p[0] for p in PARTS})
  if unknown:
    parser.error(f'unknown --parts {unknown}; valid: {[p[0] for p in PARTS]}')
  os.makedirs(args.out, exist_ok=True)
  out = os.path.abspath(args.out)
  npz = tiny_npz(os.path.join(out, 'tiny.npz')) if args.smoke else os.path.abspath(args.npz)
  if 'experiment' in wanted and not os.path.exists(npz):
    parser.error(f'--npz {npz} does not exist: copy ../shared/data/cifar10_subset.npz there')
  env = dict(os.environ, AUTOSLIM_BENCH_RESULTS=os.path.join(out, 'rows.md'))
  if args.smoke:
    env['AUTOSLIM_BENCH_SMOKE'] = '1'
  summary = {'started': datetime.datetime.now().isoformat(timespec='seconds'),
             'host': platform.node(), 'smoke': args.smoke, 'environment': environment(),
             'parts': []}
  summary_path = os.path.join(out, 'summary.json')
  for name, part_args, cap in PARTS:
    if name not in wanted:
      continue
    if name == 'experiment':
      part_args = part_args + [f'--workdir={os.path.join(out, "experiment")}', f'--npz={npz}',
                               f'--seeds={args.seed}']
      if args.smoke:
        part_args += SMOKE_EXPERIMENT
    elif args.smoke:
      part_args = [a for a in part_args if not a.startswith(('--batch_sizes', '--images',
                                                            '--batch_size', '--repeats'))]
      part_args += ['--repeats=1'] if 'supernet' in name else []
      if name == 'supernet_imagenet':  # the bench's bfloat16 pair, exercised here at least
        part_args = [a if not a.startswith('--variants') else '--variants=fused,bfloat16'
                     for a in part_args]
    part_env = env
    if name == 'experiment':
      part_env = dict(env, JAX_COMPILATION_CACHE_DIR=os.path.join(out, 'compilation_cache'))
    result = run_part(name, part_args, cap * (3 if args.smoke else 1), out, part_env)
    print(f'{name}: {result["seconds"]} s, exit {result["returncode"]}'
          f'{" (stopped at its cap)" if result["timed_out"] else ""}, '
          f'{len(result["rows"])} rows', flush=True)
    summary['parts'].append(result)
    with open(summary_path, 'w') as f:
      json.dump(summary, f, indent=1)
  failed = [p['name'] for p in summary['parts'] if p['returncode'] not in (0, None)]
  print(f'summary: {summary_path}' + (f'; failed: {failed}' if failed else ''))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
