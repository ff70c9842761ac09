"""Depthwise conv on this host: Flax's grouped conv against the shifted multiply-add form
(``layers.ShiftedDepthwiseConv``), forward and forward+backward, at MobileNet shapes.

  python bench/bench_depthwise.py

Needs jax, flax and numpy only. Prints the machine, versions and the median of repeated runs
after a warm-up (compile excluded) and appends the table to bench/results.md.
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
  header = (f'### Depthwise conv, {datetime.date.today()}: {platform.processor() or platform.machine()}'
            f', {os.cpu_count()} CPUs, {device.platform} ({device.device_kind}); jax '
            f'{jax.__version__}, flax {flax.__version__}\n\n'
            f'Command: `python bench/bench_depthwise.py`; median of {REPEATS} runs after warm-up, '
            f'ms.\n\n')
  table = ('| input (NHWC, stride) | grouped fwd | grouped fwd+bwd | shifted fwd | '
           'shifted fwd+bwd | speed-up fwd / fwd+bwd |\n|---|---:|---:|---:|---:|---:|\n')
  for name, gf, gb, sf, sb in rows:
    table += f'| {name} | {gf:.1f} | {gb:.1f} | {sf:.1f} | {sb:.1f} | {gf / sf:.1f}x / {gb / sb:.1f}x |\n'
  print(header + table)
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results.md'), 'a') as f:
    f.write('\n' + header + table)


if __name__ == '__main__':
  main()
