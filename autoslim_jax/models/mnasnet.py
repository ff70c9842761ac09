"""Slimmable MNasNet (Tan et al. 2019), the variant without squeeze-and-excite (MNasNet-B1, as
torchvision's ``mnasnet1_0``) that the AutoSlim paper searches; ImageNet and CIFAR layouts.

It is an inverted-residual network like MobileNet v2 (``mobilenet_v2.py`` builds both) with its
own stage table: expansions 3 and 6, 5x5 depthwise kernels in three stages, ReLU instead of
ReLU6. Units (25) and the official ``channel_num_list`` layout are MobileNet v2's: ``stem``,
``block{i}_expand`` x 16, ``stage1``-``stage7``, ``last``. The last conv is a unit: the published
AutoSlim-MNasNet lists end in 1280 or 1920 channels.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from autoslim_jax.models.base import Network
from autoslim_jax.models.mobilenet_v2 import Architecture, inverted_residual_network

MNASNET = Architecture(
    name='mnasnet',
    # (expansion t, output channels c, blocks n, first stride s, depthwise kernel k)
    stages=((1, 16, 1, 1, 3), (3, 24, 3, 2, 3), (3, 40, 3, 2, 5), (6, 80, 3, 2, 5),
            (6, 96, 2, 1, 3), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)),
    stem_channels=32, last_channels=1280, activation=nn.relu)


def mnasnet(width_mult: float = 1.5, layout: str = 'imagenet', num_classes: int | None = None,
            image_size: int | None = None, in_channels: int = 3,
            dtype: jnp.dtype = jnp.float32) -> Network:
  """A slimmable MNasNet with max width ``width_mult`` (1.5x in the paper)."""
  return inverted_residual_network(MNASNET, width_mult, layout, num_classes, image_size,
                                   in_channels, dtype)
