r"""Everything an accelerator host should measure, in one command, within about 8 minutes.

  python bench/accelerator_run.py OUT [--npz=cifar10_subset.npz] [--seed=0]
  python bench/accelerator_run.py OUT --smoke      # the whole path at tiny sizes, on a CPU

Parts, each a subprocess with its own time cap (a part that runs over is stopped, and what it
finished is kept), in this order:

1. ``supernet_cifar``, ``supernet_imagenet``: ``bench_supernet_step.py`` on the CIFAR (batch
   256 and 1024) and ImageNet (128 and 256) MobileNet v2 1.5x supernets: JAX fused, sequential
   and bfloat16 against the PyTorch slicing step, images/s, compile time, MACs/s against the
   measured matrix-product peak, the JAX / PyTorch ratio;
2. ``search``: ``bench_search.py``, one greedy step of the CIFAR supernet, 25 candidates on
   5,000 held-out images, chunks of 1, 5 and 25: candidates/s and the vmapped / one-at-a-time
   ratio;
3. ``experiment``: ``python -m autoslim_jax.experiment --config=configs/cifar10_sample_gpu.py``
   on the CIFAR-10 sample (``--npz``), one seed (``--seed``) per invocation. Its workdir is
   ``OUT/experiment``: run again with the same OUT and another seed, and the summary covers
   every seed recorded there.

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

# (name, command, seconds allowed): the caps add up to 8 minutes.
PARTS = (
    ('supernet_cifar', ['bench/bench_supernet_step.py', '--network=cifar',
                        '--batch_sizes=256,1024', '--variants=fused,sequential,bfloat16',
                        '--repeats=5'], 110),
    ('supernet_imagenet', ['bench/bench_supernet_step.py', '--network=imagenet',
                           '--batch_sizes=128,256', '--variants=fused,sequential,bfloat16',
                           '--repeats=5'], 110),
    ('search', ['bench/bench_search.py', '--images=5000', '--batch_size=1000',
                '--chunk_sizes=1,5,0'], 60),
    ('experiment', ['-m', 'autoslim_jax.experiment', '--config=configs/cifar10_sample_gpu.py',
                    '--estimator_path=4', '--estimator_random=4'], 200),
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
        part_args += ['--estimator_path=0', '--estimator_random=0', *SMOKE_EXPERIMENT]
    elif args.smoke:
      part_args = [a for a in part_args if not a.startswith(('--batch_sizes', '--images',
                                                            '--batch_size', '--repeats'))]
      part_args += ['--repeats=1'] if 'supernet' in name else []
      # One bfloat16 pair (the ImageNet layout's) keeps the CPU's slow bfloat16 short.
      smoke_variants = '--variants=fused' + (',bfloat16' if 'imagenet' in name else '')
      part_args = [a if not a.startswith('--variants') else smoke_variants for a in part_args]
    result = run_part(name, part_args, cap * (3 if args.smoke else 1), out, env)
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
