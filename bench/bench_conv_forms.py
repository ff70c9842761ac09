"""The CPU forms of the convs against Flax's convs on this host, forward and forward+backward,
at MobileNet shapes: the depthwise conv as shifted multiply-adds (``layers.ShiftedDepthwiseConv``)
against the grouped conv, and the 1x1 conv as a matrix product (``layers.PointwiseConvAsDot``)
against ``nn.Conv``.

  python bench/bench_conv_forms.py

Needs jax, flax and numpy only. Prints the machine, versions, the median of repeated runs after
a warm-up and, apart, the seconds of the first calls (compilation), and appends a line per shape
to bench/results.md. (The
depthwise rows recorded before 2026-11-24's pointwise rows came from this script under its
earlier name, bench/bench_depthwise.py.)
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import layers  # pylint: disable=wrong-import-position

# (batch, height, width, channels, stride): a CIFAR MobileNet v2 expansion at 32x32, a strided
# one, and the greedy search's vmapped batch of 24 candidates x 128 images at 8x8.
DEPTHWISE_SHAPES = ((256, 32, 32, 144, 1), (256, 32, 32, 144, 2), (3072, 8, 8, 96, 1))
# (batch, height, width, in channels, out channels): a CIFAR MobileNet v2 expansion and
# projection at 32x32 (a sandwich of 4 x 32 images), and a late expansion at 8x8.
POINTWISE_SHAPES = ((128, 32, 32, 24, 144), (128, 32, 32, 144, 24), (128, 8, 8, 64, 384))
REPEATS = 5
if common.SMOKE:
  DEPTHWISE_SHAPES, POINTWISE_SHAPES, REPEATS = ((4, 8, 8, 16, 1),), ((4, 8, 8, 8, 16),), 1


def forward_and_backward_ms(module, variables, x) -> tuple[float, float, float]:
  """Median ms of the forward and of forward+backward, and the seconds of their first calls
  (compilation included)."""
  forward = jax.jit(module.apply)
  backward = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=(0, 1)))
  medians, first_calls = [], 0.0
  for fn in (forward, backward):
    first, times = common.timed(lambda f=fn: jax.block_until_ready(f(variables, x)), REPEATS)
    medians.append(common.median(times) * 1e3)
    first_calls += first
  return medians[0], medians[1], first_calls


def compare(native, cpu_form, x) -> tuple[float, ...]:
  variables = native.init(jax.random.key(0), x[:1])
  return (forward_and_backward_ms(native, variables, x) +
          forward_and_backward_ms(cpu_form, variables, x))


def main() -> None:
  rng = np.random.default_rng(0)
  rows = []
  for batch, height, width, channels, stride in DEPTHWISE_SHAPES:
    x = jnp.asarray(rng.normal(size=(batch, height, width, channels)), jnp.float32)
    grouped = nn.Conv(channels, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                      feature_group_count=channels, use_bias=False,
                      kernel_init=layers.CONV_INIT)
    times = compare(grouped, layers.ShiftedDepthwiseConv(3, stride, 1), x)
    rows.append(('depthwise 3x3 conv, grouped vs shifted', 'grouped', 'shifted',
                 f'{batch}x{height}x{width}x{channels} s{stride}') + times)
  for batch, height, width, in_channels, out_channels in POINTWISE_SHAPES:
    x = jnp.asarray(rng.normal(size=(batch, height, width, in_channels)), jnp.float32)
    conv = nn.Conv(out_channels, (1, 1), use_bias=False, kernel_init=layers.CONV_INIT)
    times = compare(conv, layers.PointwiseConvAsDot(out_channels), x)
    rows.append(('1x1 conv, conv vs matrix product', 'conv', 'dot',
                 f'{batch}x{height}x{width}x{in_channels} to {out_channels}') + times)
  common.append_results([
      common.row(benchmark, f'{shape}, median of {REPEATS} after warm-up',
                 f'{native} {native_fwd:.1f} / {native_bwd:.1f} ms, {form} {form_fwd:.1f} / '
                 f'{form_bwd:.1f} ms (fwd / fwd+bwd): {native_fwd / form_fwd:.1f}x / '
                 f'{native_bwd / form_bwd:.1f}x faster; first calls (compile) {native_first:.1f} '
                 f's / {form_first:.1f} s')
      for (benchmark, native, form, shape, native_fwd, native_bwd, native_first, form_fwd,
           form_bwd, form_first) in rows])

if __name__ == '__main__':
  main()
