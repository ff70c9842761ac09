"""What a whole pipeline run compiles, and its wall time, from an empty compilation cache.

  python bench/bench_compiles.py                                  # the quickstart, as shipped
  python bench/bench_compiles.py --set=retrain.side_by_side=False # each retrained net alone
  python bench/bench_compiles.py --second_seed                    # then seed 1, same cache

Runs ``python -m autoslim_jax.main`` in a fresh process with a fresh, empty persistent
compilation cache (a temporary folder), then reads the run's ``WORKDIR/compilation.json``:
the wall time of the run and of each stage, the programs XLA compiled, those that took a second
or more, and the seconds spent compiling. ``--second_seed`` then runs the same config at seed 1
with the same cache, in a new process: what it compiles anew is what the seed or the searched
widths changed in a program (ideally nothing that takes long). Appends one line per run to
bench/results.md. Needs the package installed (README); on a 2-core CPU the quickstart takes
3-5 minutes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# AUTOSLIM_BENCH_SMOKE: the quickstart at tiny sizes (MobileNet v1, a two-member sandwich, one
# target, a few steps), as the suite's shortened quickstart (tests/conftest.py).
SMOKE_OVERRIDES = ('model=mobilenet_v1', 'supernet.num_sandwich=2',
                   'search.targets.macs_of_width=(0.45,)', 'supernet.num_epochs=0.1',
                   'retrain.num_epochs=0.1', 'dataset.heldout_size=64', 'search.batch_size=64',
                   'supernet.eval_batch_size=64', 'calibration.num_images=64')


def run_pipeline(config: str, overrides: list[str], workdir: str, cache_dir: str) -> dict:
  """One run of the pipeline in a new process; its compilation.json, with the command and the
  wall time of the whole process (imports and start-up included) added."""
  command = [sys.executable, '-m', 'autoslim_jax.main', f'--config={config}',
             f'--workdir={workdir}', f'--config.compilation.cache_dir={cache_dir}',
             *(f'--config.{o}' for o in overrides)]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    raise SystemExit(f'the run failed (exit {done.returncode}): {" ".join(command)}\n'
                     f'{done.stderr[-4000:]}')
  with open(os.path.join(workdir, 'compilation.json')) as f:
    summary = json.load(f)
  summary['process_wall_seconds'] = round(wall, 1)
  summary['command'] = ' '.join(['python'] + command[1:])
  return summary


def describe(summary: dict) -> str:
  """'run 212 s (supernet 70 s, ...); compiled 87 programs in 46.6 s, 7 of 1 s or more'."""
  total = summary['total']
  stages = ', '.join(f'{name} {entry["wall_seconds"]:.0f} s'
                     for name, entry in summary['stages'].items() if 'wall_seconds' in entry)
  return (f'run {summary["process_wall_seconds"]:.0f} s ({stages}); compiled '
          f'{total["programs"]} programs in {total["seconds"]:.1f} s, '
          f'{total["long_programs"]} of 1 s or more; loaded {total["cache_hits"]} from the cache')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='configs/quickstart.py')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override, as --config.KEY=VALUE of the command line')
  parser.add_argument('--second_seed', action='store_true',
                      help='then run seed 1 with the same cache and report what it compiles')
  parser.add_argument('--keep', default='', help='a folder to keep the workdirs and the cache in')
  args = parser.parse_args()
  overrides = list(SMOKE_OVERRIDES if common.SMOKE else ()) + args.set
  with tempfile.TemporaryDirectory() as scratch:
    root = args.keep or scratch
    cache_dir = os.path.join(root, 'cache')
    if os.path.exists(cache_dir) and os.listdir(cache_dir):
      raise SystemExit(f'--keep={args.keep}: its cache folder is not empty; give a new folder')
    runs = [('seed 0', run_pipeline(args.config, overrides, os.path.join(root, 'seed_0'),
                                    cache_dir))]
    if args.second_seed:
      runs.append(('seed 1, same cache', run_pipeline(
          args.config, overrides + ['seed=1'], os.path.join(root, 'seed_1'), cache_dir)))
  label = f'{args.config}' + (f' {" ".join(args.set)}' if args.set else '')
  rows = []
  for name, summary in runs:
    print(f'{name}: {describe(summary)}')
    print(f'  programs compiled, by name: {summary["programs_by_name"]}')
    rows.append(common.row(f'pipeline compiles, {name}', label, describe(summary),
                           ('jax', 'jaxlib', 'flax')))
  common.append_results(rows)


if __name__ == '__main__':
  main()
