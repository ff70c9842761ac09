"""Depthwise conv on this host: Flax's grouped conv against the shifted multiply-add form
(``layers.ShiftedDepthwiseConv``), forward and forward+backward, at MobileNet shapes.

  python bench/bench_depthwise.py

Needs jax, flax and numpy only. Prints the machine, versions and the median of repeated runs
after a warm-up (compile excluded) and appends a line per shape to bench/results.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from autoslim_jax import layers  # pylint: disable=wrong-import-position

# (batch, height, width, channels, stride): a CIFAR MobileNet v2 expansion at 32x32, a strided
# one, and the greedy search's vmapped batch of 24 candidates x 128 images at 8x8.
SHAPES = ((256, 32, 32, 144, 1), (256, 32, 32, 144, 2), (3072, 8, 8, 96, 1))
REPEATS = 5


def median_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  rows = []
  for batch, height, width, channels, stride in SHAPES:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, height, width, channels)),
                    jnp.float32)
    grouped = nn.Conv(channels, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                      feature_group_count=channels, use_bias=False,
                      kernel_init=layers.CONV_INIT)
    shifted = layers.ShiftedDepthwiseConv(3, stride, 1)
    variables = grouped.init(jax.random.key(0), x[:1])
    timings = {}
    for name, module in (('grouped', grouped), ('shifted', shifted)):
      forward = jax.jit(module.apply)
      backward = jax.jit(jax.grad(lambda v, x, m=module: jnp.sum(m.apply(v, x) ** 2),
                                  argnums=(0, 1)))
      timings[name] = (median_seconds(forward, variables, x), median_seconds(backward, variables, x))
    rows.append((f'{batch}x{height}x{width}x{channels} s{stride}',) + tuple(
        t * 1e3 for t in timings['grouped'] + timings['shifted']))

  device = jax.devices()[0]
  machine = (f'{platform.node()} {platform.machine()} {os.cpu_count()} cores, '
             f'{device.platform} {device.device_kind}')
  versions = f'jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}'
  lines = []
  for name, grouped_fwd, grouped_bwd, shifted_fwd, shifted_bwd in rows:
    lines.append(
        f'| {datetime.date.today()} | depthwise 3x3 conv, grouped vs shifted | {machine} | '
        f'{versions} | {name}, median of {REPEATS} after warm-up | grouped {grouped_fwd:.1f} / '
        f'{grouped_bwd:.1f} ms, shifted {shifted_fwd:.1f} / {shifted_bwd:.1f} ms (fwd / fwd+bwd):'
        f' {grouped_fwd / shifted_fwd:.1f}x / {grouped_bwd / shifted_bwd:.1f}x faster | '
        f'`python bench/bench_depthwise.py` |')
  print('\n'.join(lines))
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results.md'), 'a') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
