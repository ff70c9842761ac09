"""Slimmable inverted-residual networks: MobileNet v2 (Sandler et al. 2018) and, with its own
stage table, MNasNet (``mnasnet.py``); ImageNet and CIFAR layouts.

Units (25 for both): ``stem`` (first conv; block 0's depthwise follows it), ``block{i}_expand``
for the 16 blocks with an expansion conv (each with its depthwise), ``stage{s}`` for the 7
residual streams (every block output of a stage is added into one stream), and ``last`` (the
final 1x1 conv; the classifier's input follows it, its output, the classes, is never slimmed).

The CIFAR layout is the paper's 88M-MACs network: the stem and the 24-channel stage at stride 1
(total stride 8), 32x32 inputs, 10 classes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoslim_jax.channels import CLASSES, make_divisible
from autoslim_jax.layers import SlimConv, SlimDense
from autoslim_jax.models.base import Network

LAYOUTS = {
    # layout: (stem stride, stride of the 24-channel stage (stage 2), image size, classes)
    'imagenet': (2, 2, 224, 1000),
    'cifar': (1, 1, 32, 10),
}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """An inverted-residual network family at 1.0x.

  ``stages``: per stage (expansion t, output channels c, blocks n, first stride s, depthwise
  kernel k). Stage 1 is a single t = 1 block (a depthwise on the stem, then a linear projection).
  """
  name: str
  stages: tuple[tuple[int, int, int, int, int], ...]
  stem_channels: int
  last_channels: int
  activation: Callable[[jax.Array], jax.Array]


MOBILENET_V2 = Architecture(
    name='mobilenet_v2',
    stages=((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3),
            (6, 96, 3, 1, 3), (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)),
    stem_channels=32, last_channels=1280, activation=nn.relu6)


def block_plan(layout: str, arch: Architecture = MOBILENET_V2) -> list[dict]:
  """Per block: stride, expansion, kernel and the units of its input, expansion and output."""
  check_layout(layout, arch)
  _, stage2_stride, _, _ = LAYOUTS[layout]
  plan, in_unit, index = [], 'stem', 0
  for stage, (t, _, n, s, k) in enumerate(arch.stages, start=1):
    for i in range(n):
      stride = (stage2_stride if stage == 2 else s) if i == 0 else 1
      plan.append(dict(index=index, stride=stride, expansion=t, kernel_size=k, in_unit=in_unit,
                       expand_unit=f'block{index}_expand' if t != 1 else None,
                       out_unit=f'stage{stage}'))
      in_unit, index = f'stage{stage}', index + 1
  return plan


def widths(width_mult: float, layout: str = 'imagenet',
           arch: Architecture = MOBILENET_V2) -> dict[str, int]:
  """Channels per unit of the uniform ``width_mult`` network, in unit order.

  As the reference networks: stem and stage widths rounded with ``make_divisible``, expansions
  the (rounded) input width times t, the last conv never below its 1.0x width.
  """
  result = {'stem': make_divisible(arch.stem_channels * width_mult)}
  for block in block_plan(layout, arch):
    if block['expand_unit']:
      result[block['expand_unit']] = result[block['in_unit']] * block['expansion']
    stage = int(block['out_unit'][len('stage'):])
    result.setdefault(block['out_unit'], make_divisible(arch.stages[stage - 1][1] * width_mult))
  result['last'] = make_divisible(arch.last_channels * max(1.0, width_mult))
  return result


def official_layout(layout: str = 'imagenet',
                    arch: Architecture = MOBILENET_V2) -> tuple[str, ...]:
  """Entries of the official list: first conv, block 0 out, (expand, out) x 16, last, classes."""
  entries = ['stem']
  for block in block_plan(layout, arch):
    if block['expand_unit']:
      entries.append(block['expand_unit'])
    entries.append(block['out_unit'])
  return tuple(entries + ['last', CLASSES])


def check_layout(layout: str, arch: Architecture) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f'unknown {arch.name} layout {layout!r}; valid: {sorted(LAYOUTS)}')


class InvertedResidual(nn.Module):
  widths: Mapping[str, int]
  in_unit: str
  expand_unit: str | None
  out_unit: str
  stride: int
  kernel_size: int = 3
  activation: Callable[[jax.Array], jax.Array] = nn.relu6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, config=None, train=False):
    shortcut = x
    hidden_unit = self.in_unit
    if self.expand_unit:
      hidden_unit = self.expand_unit
      x = SlimConv(self.widths[hidden_unit], self.in_unit, hidden_unit,
                   activation=self.activation, dtype=self.dtype, name='expand')(x, config, train)
    x = SlimConv(self.widths[hidden_unit], hidden_unit, hidden_unit, kernel_size=self.kernel_size,
                 strides=self.stride, depthwise=True, activation=self.activation,
                 dtype=self.dtype, name='depthwise')(x, config, train)
    x = SlimConv(self.widths[self.out_unit], hidden_unit, self.out_unit, activation=None,
                 dtype=self.dtype, name='project')(x, config, train)
    if self.in_unit == self.out_unit:  # stride 1 and one residual stream: both sides masked alike
      x = x + shortcut
    return x


class InvertedResidualNetwork(nn.Module):
  """``arch`` at physical ``widths`` (unit -> channels); masked by ``config`` if given."""
  widths: Mapping[str, int]
  arch: Architecture = MOBILENET_V2
  layout: str = 'imagenet'
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, config=None, train: bool = False) -> jax.Array:
    stem_stride = LAYOUTS[self.layout][0]
    x = images.astype(self.dtype)
    x = SlimConv(self.widths['stem'], None, 'stem', kernel_size=3, strides=stem_stride,
                 activation=self.arch.activation, dtype=self.dtype, name='stem')(x, config, train)
    for block in block_plan(self.layout, self.arch):
      x = InvertedResidual(self.widths, block['in_unit'], block['expand_unit'], block['out_unit'],
                           block['stride'], block['kernel_size'], self.arch.activation,
                           dtype=self.dtype, name=f'block{block["index"]}')(x, config, train)
    x = SlimConv(self.widths['last'], f'stage{len(self.arch.stages)}', 'last',
                 activation=self.arch.activation, dtype=self.dtype, name='last')(x, config, train)
    x = jnp.mean(x, axis=(1, 2))
    x = SlimDense(self.num_classes, 'last', dtype=self.dtype, name='classifier')(x, config)
    return x.astype(jnp.float32)


def inverted_residual_network(arch: Architecture, width_mult: float, layout: str,
                              num_classes: int | None, image_size: int | None, in_channels: int,
                              dtype: jnp.dtype) -> Network:
  check_layout(layout, arch)
  _, _, default_size, default_classes = LAYOUTS[layout]
  num_classes = num_classes or default_classes
  image_size = image_size or default_size

  def build(unit_widths):
    return InvertedResidualNetwork(widths=dict(unit_widths), arch=arch, layout=layout,
                                   num_classes=num_classes, dtype=dtype)

  return Network(
      name=arch.name, build=build, max_widths=widths(width_mult, layout, arch),
      width_config=lambda w: widths(w, layout, arch),
      input_shape=(image_size, image_size, in_channels), num_classes=num_classes,
      official_layout=official_layout(layout, arch), max_width_mult=width_mult,
      description=f'{layout} layout,')


def mobilenet_v2(width_mult: float = 1.5, layout: str = 'imagenet', num_classes: int | None = None,
                 image_size: int | None = None, in_channels: int = 3,
                 dtype: jnp.dtype = jnp.float32) -> Network:
  """A slimmable MobileNet v2 with max width ``width_mult`` (1.5x in the paper)."""
  return inverted_residual_network(MOBILENET_V2, width_mult, layout, num_classes, image_size,
                                   in_channels, dtype)
