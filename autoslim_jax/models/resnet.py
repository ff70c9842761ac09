"""Slimmable ResNet-50 (He et al. 2016; bottleneck v1.5: the stride on the 3x3 conv), ImageNet
and CIFAR layouts.

Units (37): ``stem`` (the first conv), ``stage1``-``stage4`` (each stage's residual stream: every
block output of a stage is added into it, and the first block's projection shortcut writes into
it), and ``block{i}_conv1`` / ``block{i}_conv2`` for the two inner convs of the 16 bottleneck
blocks. The official ``channel_num_list`` layout is (stem, then per stage: the stage's output
(the projection), (conv1, conv2, output) per block; classes).

The CIFAR layout is the usual CIFAR ResNet-50: a 3x3 stride-1 stem without max pooling (total
stride 8, 4x4 before pooling), 32x32 inputs, 10 classes.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoslim_jax.channels import CLASSES, make_divisible
from autoslim_jax.layers import SlimConv, SlimDense
from autoslim_jax.models.base import Network

STEM_CHANNELS = 64
# (inner width at 1.0x, blocks, first stride) per stage; a stage's output is 4x its inner width.
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
EXPANSION = 4
LAYOUTS = {
    # layout: (stem kernel, stem stride, max pooling after the stem, image size, classes)
    'imagenet': (7, 2, True, 224, 1000),
    'cifar': (3, 1, False, 32, 10),
}


def block_plan() -> list[dict]:
  """Per bottleneck block: stride and the units of its input, inner convs and output."""
  plan, in_unit, index = [], 'stem', 0
  for stage, (_, blocks, first_stride) in enumerate(STAGES, start=1):
    for i in range(blocks):
      plan.append(dict(index=index, stride=first_stride if i == 0 else 1, in_unit=in_unit,
                       conv1_unit=f'block{index}_conv1', conv2_unit=f'block{index}_conv2',
                       out_unit=f'stage{stage}', projection=i == 0))
      in_unit, index = f'stage{stage}', index + 1
  return plan


def widths(width_mult: float) -> dict[str, int]:
  """Channels per unit of the uniform ``width_mult`` network, in unit order (network order)."""
  result = {'stem': make_divisible(STEM_CHANNELS * width_mult)}
  for block in block_plan():
    inner, _, _ = STAGES[int(block['out_unit'][len('stage'):]) - 1]
    if block['projection']:
      result[block['out_unit']] = make_divisible(inner * EXPANSION * width_mult)
    result[block['conv1_unit']] = result[block['conv2_unit']] = make_divisible(inner * width_mult)
  return result


def official_layout() -> tuple[str, ...]:
  entries = ['stem']
  for block in block_plan():
    if block['projection']:
      entries.append(block['out_unit'])
    entries += [block['conv1_unit'], block['conv2_unit'], block['out_unit']]
  return tuple(entries + [CLASSES])


class Bottleneck(nn.Module):
  widths: Mapping[str, int]
  plan: Mapping[str, object]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, config=None, train=False):
    p, w = self.plan, self.widths
    shortcut = x
    if p['projection']:
      shortcut = SlimConv(w[p['out_unit']], p['in_unit'], p['out_unit'], strides=p['stride'],
                          activation=None, dtype=self.dtype, name='projection')(x, config, train)
    x = SlimConv(w[p['conv1_unit']], p['in_unit'], p['conv1_unit'], dtype=self.dtype,
                 name='conv1')(x, config, train)
    x = SlimConv(w[p['conv2_unit']], p['conv1_unit'], p['conv2_unit'], kernel_size=3,
                 strides=p['stride'], dtype=self.dtype, name='conv2')(x, config, train)
    x = SlimConv(w[p['out_unit']], p['conv2_unit'], p['out_unit'], activation=None,
                 dtype=self.dtype, name='conv3')(x, config, train)
    # Both summands are masked to the stream's channels, so the sum and its ReLU are too.
    return nn.relu(x + shortcut)


class ResNet(nn.Module):
  """ResNet-50 at physical ``widths`` (unit -> channels); masked by ``config`` if given."""
  widths: Mapping[str, int]
  layout: str = 'imagenet'
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, config=None, train: bool = False) -> jax.Array:
    stem_kernel, stem_stride, max_pool, _, _ = LAYOUTS[self.layout]
    x = images.astype(self.dtype)
    x = SlimConv(self.widths['stem'], None, 'stem', kernel_size=stem_kernel, strides=stem_stride,
                 dtype=self.dtype, name='stem')(x, config, train)
    if max_pool:  # masked channels are 0 in every window, so they stay 0
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for plan in block_plan():
      x = Bottleneck(self.widths, plan, dtype=self.dtype, name=f'block{plan["index"]}')(
          x, config, train)
    x = jnp.mean(x, axis=(1, 2))
    x = SlimDense(self.num_classes, f'stage{len(STAGES)}', dtype=self.dtype,
                  name='classifier')(x, config)
    return x.astype(jnp.float32)


def resnet50(width_mult: float = 1.0, layout: str = 'imagenet', num_classes: int | None = None,
             image_size: int | None = None, in_channels: int = 3,
             dtype: jnp.dtype = jnp.float32) -> Network:
  """A slimmable ResNet-50 with max width ``width_mult`` (1.0x in the paper)."""
  if layout not in LAYOUTS:
    raise ValueError(f'unknown resnet50 layout {layout!r}; valid: {sorted(LAYOUTS)}')
  *_, default_size, default_classes = LAYOUTS[layout]
  num_classes = num_classes or default_classes
  image_size = image_size or default_size

  def build(unit_widths):
    return ResNet(widths=dict(unit_widths), layout=layout, num_classes=num_classes, dtype=dtype)

  return Network(
      name='resnet50', build=build, max_widths=widths(width_mult), width_config=widths,
      input_shape=(image_size, image_size, in_channels), num_classes=num_classes,
      official_layout=official_layout(), max_width_mult=width_mult,
      description=f'{layout} layout,')
