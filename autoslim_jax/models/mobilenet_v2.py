"""Slimmable MobileNet v2 (Sandler et al. 2018), ImageNet and CIFAR layouts.

Units (25): ``stem`` (first conv; block 0's depthwise follows it), ``block{i}_expand`` for the
16 blocks with an expansion conv (each with its depthwise), ``stage{s}`` for the 7 residual
streams (every block output of a stage is added into one stream), and ``last`` (the final 1x1
conv; the classifier's input follows it, its output, the classes, is never slimmed).

The CIFAR layout is the paper's 88M-MACs network: the stem and the 24-channel stage at stride 1
(total stride 8), 32x32 inputs, 10 classes.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoslim_jax.channels import CLASSES, make_divisible
from autoslim_jax.layers import SlimConv, SlimDense
from autoslim_jax.models.base import Network

# (expansion t, output channels c at 1.0x, blocks n, first stride s) per stage.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
LAYOUTS = {
    # layout: (stem stride, stride of the 24-channel stage, image size, classes)
    'imagenet': (2, 2, 224, 1000),
    'cifar': (1, 1, 32, 10),
}


def block_plan(layout: str) -> list[dict]:
  """Per block: its stride, expansion and the units of its input, expansion and output."""
  _, stage2_stride, _, _ = LAYOUTS[layout]
  plan, in_unit, index = [], 'stem', 0
  for stage, (t, _, n, s) in enumerate(STAGES, start=1):
    for i in range(n):
      stride = (stage2_stride if stage == 2 else s) if i == 0 else 1
      plan.append(dict(index=index, stride=stride, expansion=t, in_unit=in_unit,
                       expand_unit=f'block{index}_expand' if t != 1 else None,
                       out_unit=f'stage{stage}'))
      in_unit, index = f'stage{stage}', index + 1
  return plan


def widths(width_mult: float, layout: str = 'imagenet') -> dict[str, int]:
  """Channels per unit of the uniform ``width_mult`` network, in unit order.

  As the reference MobileNet v2: stage widths rounded with ``make_divisible``, expansions the
  (rounded) input width times t, the last conv never below 1280.
  """
  result = {'stem': make_divisible(STEM_CHANNELS * width_mult)}
  for block in block_plan(layout):
    if block['expand_unit']:
      result[block['expand_unit']] = result[block['in_unit']] * block['expansion']
    stage = int(block['out_unit'][len('stage'):])
    result.setdefault(block['out_unit'], make_divisible(STAGES[stage - 1][1] * width_mult))
  result['last'] = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
  return result


def official_layout(layout: str = 'imagenet') -> tuple[str, ...]:
  """Entries of the official list: first conv, block 0 out, (expand, out) x 16, last, classes."""
  entries = ['stem']
  for block in block_plan(layout):
    if block['expand_unit']:
      entries.append(block['expand_unit'])
    entries.append(block['out_unit'])
  return tuple(entries + ['last', CLASSES])


class InvertedResidual(nn.Module):
  widths: Mapping[str, int]
  in_unit: str
  expand_unit: str | None
  out_unit: str
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, config=None, train=False):
    shortcut = x
    hidden_unit = self.in_unit
    if self.expand_unit:
      hidden_unit = self.expand_unit
      x = SlimConv(self.widths[hidden_unit], self.in_unit, hidden_unit, activation=nn.relu6,
                   dtype=self.dtype, name='expand')(x, config, train)
    x = SlimConv(self.widths[hidden_unit], hidden_unit, hidden_unit, kernel_size=3,
                 strides=self.stride, depthwise=True, activation=nn.relu6, dtype=self.dtype,
                 name='depthwise')(x, config, train)
    x = SlimConv(self.widths[self.out_unit], hidden_unit, self.out_unit, activation=None,
                 dtype=self.dtype, name='project')(x, config, train)
    if self.in_unit == self.out_unit:  # stride 1 and one residual stream: both sides masked alike
      x = x + shortcut
    return x


class MobileNetV2(nn.Module):
  """MobileNet v2 at physical ``widths`` (unit -> channels); masked by ``config`` if given."""
  widths: Mapping[str, int]
  layout: str = 'imagenet'
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, config=None, train: bool = False) -> jax.Array:
    stem_stride = LAYOUTS[self.layout][0]
    x = images.astype(self.dtype)
    x = SlimConv(self.widths['stem'], None, 'stem', kernel_size=3, strides=stem_stride,
                 activation=nn.relu6, dtype=self.dtype, name='stem')(x, config, train)
    for block in block_plan(self.layout):
      x = InvertedResidual(self.widths, block['in_unit'], block['expand_unit'], block['out_unit'],
                           block['stride'], dtype=self.dtype, name=f'block{block["index"]}')(
                               x, config, train)
    x = SlimConv(self.widths['last'], 'stage7', 'last', activation=nn.relu6, dtype=self.dtype,
                 name='last')(x, config, train)
    x = jnp.mean(x, axis=(1, 2))
    x = SlimDense(self.num_classes, 'last', dtype=self.dtype, name='classifier')(x, config)
    return x.astype(jnp.float32)


def mobilenet_v2(width_mult: float = 1.5, layout: str = 'imagenet', num_classes: int | None = None,
                 image_size: int | None = None, in_channels: int = 3,
                 dtype: jnp.dtype = jnp.float32) -> Network:
  """A slimmable MobileNet v2 with max width ``width_mult`` (1.5x in the paper)."""
  if layout not in LAYOUTS:
    raise ValueError(f'unknown MobileNet v2 layout {layout!r}; valid: {sorted(LAYOUTS)}')
  _, _, default_size, default_classes = LAYOUTS[layout]
  num_classes = num_classes or default_classes
  image_size = image_size or default_size

  def build(unit_widths):
    return MobileNetV2(widths=dict(unit_widths), layout=layout, num_classes=num_classes,
                       dtype=dtype)

  return Network(
      name='mobilenet_v2', build=build, max_widths=widths(width_mult, layout),
      width_config=lambda w: widths(w, layout),
      input_shape=(image_size, image_size, in_channels), num_classes=num_classes,
      official_layout=official_layout(layout), max_width_mult=width_mult,
      description=f'{layout} layout,')
