"""What every benchmark shares: the machine and versions it ran on, timing, the results file.

Imports jax and numpy only, so the benchmarks run on accelerator images without TensorFlow,
ml-collections or clu (design.md, section 5). Each benchmark puts the repository root on
``sys.path`` itself: no install is needed to run one.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# Where rows go: bench/results.md, or AUTOSLIM_BENCH_RESULTS (the accelerator run, smoke tests).
RESULTS_FILE = os.environ.get('AUTOSLIM_BENCH_RESULTS') or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'results.md')
# AUTOSLIM_BENCH_SMOKE=1: every benchmark at tiny sizes (seconds on a CPU), to check it runs; its
# numbers mean nothing (tests/test_bench.py).
SMOKE = os.environ.get('AUTOSLIM_BENCH_SMOKE') == '1'


def machine() -> str:
  """Host, CPU count and the devices JAX computes on, e.g. 'vm x86_64 2 cores, 1 cpu device'."""
  devices = jax.devices()
  kind = devices[0].device_kind if devices[0].platform != 'cpu' else 'cpu'
  return (f'{platform.node()} {platform.machine()} {os.cpu_count()} cores, {len(devices)} '
          f'{kind} device{"s" if len(devices) > 1 else ""}')


def versions(*packages: str) -> str:
  """'jax 0.10.2, flax 0.12.8' for the packages named (import names)."""
  found = []
  for name in packages:
    module = importlib.import_module(name)
    found.append(f'{name.replace("_", "-")} {getattr(module, "__version__", "?")}')
  return ', '.join(found)


def command() -> str:
  """The command line that ran this benchmark, as a user would type it."""
  return ' '.join(['python'] + [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
  """(seconds of the first call, seconds of each of ``repeats`` calls after ``warmup`` more).

  ``fn`` must block until its work is done (``jax.block_until_ready``); the first call's time
  includes whatever compiles on first use.
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, times


def median(times: Sequence[float]) -> float:
  return statistics.median(times)


def matmul_peak_flops(dtype='float32', size: int | None = None, repeats: int = 5) -> float:
  """FLOP/s of a large square matrix product on the default device: the attainable peak the
  utilisation figures are quoted against (a CPU has no single datasheet number).

  2048 on a CPU; 8192 on an accelerator, where 2048 read 108-143 bfloat16 TFLOP/s on an H200
  that does about 790 (runs/accelerator_h200.md): launching, not multiplying, was timed.
  """
  if size is None:
    size = 256 if SMOKE else 2048 if jax.default_backend() == 'cpu' else 8192
  a = jnp.ones((size, size), dtype)
  product = jax.jit(lambda x: x @ x)
  _, times = timed(lambda: jax.block_until_ready(product(a)), repeats)
  return 2 * size**3 / median(times)


def append_results(lines: Sequence[str], path: str = RESULTS_FILE) -> None:
  """Prints result rows and appends them to ``path`` (bench/results.md: a markdown table)."""
  print('\n'.join(lines))
  with open(path, 'a') as f:
    f.write('\n'.join(lines) + '\n')


def row(benchmark: str, setting: str, result: str, packages: Sequence[str] = ('jax', 'flax',
                                                                             'numpy')) -> str:
  """One line of the results table: date, benchmark, machine, versions, setting, result,
  command."""
  return (f'| {datetime.date.today()} | {benchmark} | {machine()} | {versions(*packages)} | '
          f'{setting} | {result} | `{command()}` |')
