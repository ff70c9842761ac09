"""Slimmable MobileNet v1 (Howard et al. 2017), ImageNet and CIFAR layouts.

Units (14): ``stem`` (the first conv) and ``block1``-``block13``, the output of each depthwise
separable block's pointwise conv; a block's depthwise conv keeps its input's unit. The official
``channel_num_list`` layout is (first conv, the 13 block outputs, classes).

The CIFAR layout follows the CIFAR MobileNet v2 of the paper: the stem and the first stride-2
block at stride 1 (total stride 8, 4x4 before pooling), 32x32 inputs, 10 classes.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoslim_jax.channels import CLASSES, make_divisible
from autoslim_jax.layers import SlimConv, SlimDense
from autoslim_jax.models.base import Network

STEM_CHANNELS = 32
# (output channels at 1.0x, stride) of the 13 depthwise separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
LAYOUTS = {
    # layout: (stem stride, stride of block 2, image size, classes)
    'imagenet': (2, 2, 224, 1000),
    'cifar': (1, 1, 32, 10),
}
UNITS = ('stem',) + tuple(f'block{i}' for i in range(1, len(BLOCKS) + 1))


def widths(width_mult: float) -> dict[str, int]:
  """Channels per unit of the uniform ``width_mult`` network, in unit order."""
  return {unit: make_divisible(c * width_mult)
          for unit, c in zip(UNITS, (STEM_CHANNELS,) + tuple(c for c, _ in BLOCKS))}


class MobileNetV1(nn.Module):
  """MobileNet v1 at physical ``widths`` (unit -> channels); masked by ``config`` if given."""
  widths: Mapping[str, int]
  layout: str = 'imagenet'
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, config=None, train: bool = False) -> jax.Array:
    stem_stride, block2_stride, _, _ = LAYOUTS[self.layout]
    x = images.astype(self.dtype)
    x = SlimConv(self.widths['stem'], None, 'stem', kernel_size=3, strides=stem_stride,
                 activation=nn.relu6, dtype=self.dtype, name='stem')(x, config, train)
    for i, (_, stride) in enumerate(BLOCKS, start=1):
      in_unit, out_unit = UNITS[i - 1], UNITS[i]
      stride = block2_stride if i == 2 else stride
      x = SlimConv(self.widths[in_unit], in_unit, in_unit, kernel_size=3, strides=stride,
                   depthwise=True, activation=nn.relu6, dtype=self.dtype,
                   name=f'block{i}_depthwise')(x, config, train)
      x = SlimConv(self.widths[out_unit], in_unit, out_unit, activation=nn.relu6,
                   dtype=self.dtype, name=f'block{i}_pointwise')(x, config, train)
    x = jnp.mean(x, axis=(1, 2))
    x = SlimDense(self.num_classes, UNITS[-1], dtype=self.dtype, name='classifier')(x, config)
    return x.astype(jnp.float32)


def mobilenet_v1(width_mult: float = 1.5, layout: str = 'imagenet', num_classes: int | None = None,
                 image_size: int | None = None, in_channels: int = 3,
                 dtype: jnp.dtype = jnp.float32) -> Network:
  """A slimmable MobileNet v1 with max width ``width_mult`` (1.5x in the paper)."""
  if layout not in LAYOUTS:
    raise ValueError(f'unknown mobilenet_v1 layout {layout!r}; valid: {sorted(LAYOUTS)}')
  _, _, default_size, default_classes = LAYOUTS[layout]
  num_classes = num_classes or default_classes
  image_size = image_size or default_size

  def build(unit_widths):
    return MobileNetV1(widths=dict(unit_widths), layout=layout, num_classes=num_classes,
                       dtype=dtype)

  return Network(
      name='mobilenet_v1', build=build, max_widths=widths(width_mult), width_config=widths,
      input_shape=(image_size, image_size, in_channels), num_classes=num_classes,
      official_layout=UNITS + (CLASSES,), max_width_mult=width_mult,
      description=f'{layout} layout,')
