"""Corpus: a small ResNet as people write it in Flax, its shortcut projected when the shapes of
the block's input and output differ (a Python test on shapes, as Flax's ImageNet example does).

``resnet_pmap`` is the same network with the ``axis_name='batch'`` BatchNorm of code written for
``pmap``: refused before training (tests/test_corpus.py).
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class ResNetBlock(nn.Module):
  filters: int
  norm: Any
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False)
    residual = x
    y = conv(self.filters, (3, 3), (self.strides, self.strides), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = conv(self.filters, (3, 3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if residual.shape != y.shape:
      residual = conv(self.filters, (1, 1), (self.strides, self.strides), name='proj')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  stage_sizes: tuple = (1, 1)
  num_filters: int = 8
  num_classes: int = 10
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name=self.axis_name)
    x = nn.Conv(self.num_filters, (3, 3), use_bias=False, name='stem')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    index = 0
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        index += 1
        x = ResNetBlock(self.num_filters * 2 ** i, norm, 2 if i > 0 and j == 0 else 1,
                        name=f'block{index}')(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(x)


def resnet(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return ResNet(num_classes=num_classes)


def resnet_pmap(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return ResNet(num_classes=num_classes, axis_name='batch')
