"""Corpus: a ConvNeXt-style network: a patchify stem with LayerNorm over channels, blocks of a
7x7 depthwise conv, LayerNorm, an inverted 1x1 MLP with GELU and a learned layer scale. LayerNorm
normalises each pixel over its channels, so a slimmed net's statistics are not the max net's:
refused (tests/test_corpus.py)."""

import flax.linen as nn
import jax.numpy as jnp


class ConvNeXtBlock(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.dim, (7, 7), padding=3, feature_group_count=self.dim, name='dwconv')(x)
    y = nn.LayerNorm(epsilon=1e-6, name='norm')(y)
    y = nn.gelu(nn.Dense(4 * self.dim, name='pwconv1')(y))
    y = nn.Dense(self.dim, name='pwconv2')(y)
    gamma = self.param('gamma', nn.initializers.constant(1e-6), (self.dim,))
    return x + gamma * y


class ConvNeXt(nn.Module):
  dim: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.dim, (2, 2), strides=2, name='stem')(x)
    x = nn.LayerNorm(epsilon=1e-6, name='stem_norm')(x)
    x = ConvNeXtBlock(self.dim, name='block1')(x)
    x = nn.LayerNorm(name='head_norm')(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, name='head')(x)


def convnext(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return ConvNeXt(num_classes=num_classes)
