"""Corpus: a RegNetX-style network: bottleneck blocks whose 3x3 conv is grouped with a fixed
group width (8 channels a group). Slimming a grouped conv would change its groups: refused
(tests/test_corpus.py)."""

import functools

import flax.linen as nn
import jax.numpy as jnp


class XBlock(nn.Module):
  width: int
  group_width: int = 8
  strides: int = 1

  @nn.compact
  def __call__(self, x, train):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    conv = functools.partial(nn.Conv, use_bias=False)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.width:
      shortcut = norm(name='shortcut_bn')(
          conv(self.width, (1, 1), self.strides, name='shortcut')(x))
    y = nn.relu(norm(name='a_bn')(conv(self.width, (1, 1), name='a')(x)))
    y = conv(self.width, (3, 3), self.strides, feature_group_count=self.width // self.group_width,
             name='b')(y)
    y = nn.relu(norm(name='b_bn')(y))
    y = norm(name='c_bn', scale_init=nn.initializers.zeros)(conv(self.width, (1, 1), name='c')(y))
    return nn.relu(y + shortcut)


class RegNetX(nn.Module):
  widths: tuple = (16, 32)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), use_bias=False, name='stem')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='stem_bn')(x))
    for i, width in enumerate(self.widths):
      x = XBlock(width, strides=1 if i == 0 else 2, name=f'stage{i + 1}')(x, train)
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def regnet(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return RegNetX(num_classes=num_classes)
