"""Corpus: DenseNet-BC in the setup() style: bottleneck layers (BN-ReLU-1x1 conv-BN-ReLU-3x3
conv) whose outputs are concatenated to their inputs, and a transition (BN-ReLU-1x1 conv, 2x2
average pooling) between the dense blocks."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class BottleneckLayer(nn.Module):
  growth_rate: int
  bottleneck: int

  def setup(self):
    self.norm1 = nn.BatchNorm()
    self.conv1 = nn.Conv(self.bottleneck, (1, 1), use_bias=False)
    self.norm2 = nn.BatchNorm()
    self.conv2 = nn.Conv(self.growth_rate, (3, 3), use_bias=False)

  def __call__(self, x, train):
    y = self.conv1(nn.relu(self.norm1(x, use_running_average=not train)))
    y = self.conv2(nn.relu(self.norm2(y, use_running_average=not train)))
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  features: int

  def setup(self):
    self.norm = nn.BatchNorm()
    self.conv = nn.Conv(self.features, (1, 1), use_bias=False)

  def __call__(self, x, train):
    x = self.conv(nn.relu(self.norm(x, use_running_average=not train)))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetBC(nn.Module):
  blocks: Sequence[int] = (2, 1)
  growth_rate: int = 8
  stem: int = 16
  num_classes: int = 10

  def setup(self):
    self.conv0 = nn.Conv(self.stem, (3, 3), use_bias=False)
    layers, channels = [], self.stem
    for i, count in enumerate(self.blocks):
      layers += [BottleneckLayer(self.growth_rate, 2 * self.growth_rate)
                 for _ in range(count)]
      channels += count * self.growth_rate
      if i < len(self.blocks) - 1:
        channels //= 2
        layers.append(Transition(channels))
    self.layers = layers
    self.norm_final = nn.BatchNorm()
    self.classifier = nn.Dense(self.num_classes)

  def __call__(self, x, train: bool = False):
    x = self.conv0(x)
    for layer in self.layers:
      x = layer(x, train)
    x = nn.relu(self.norm_final(x, use_running_average=not train))
    return self.classifier(jnp.mean(x, axis=(1, 2)))


def densenet_bc(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return DenseNetBC(num_classes=num_classes)
