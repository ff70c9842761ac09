"""Corpus: ShuffleNet v2-style units: the input's channels split in two (``jnp.split`` of one
layer's output, or two slices ``x[..., :c]``, ``x[..., c:]``), the right half through 1x1 conv, depthwise 3x3, 1x1 conv, concatenated back
with the left half. The channel shuffle between units (a reshape that splits the channel axis
into groups, a transpose, a reshape that merges them) is a variant, refused: the masked network's
active channels would not be the slim one's after a shuffle (tests/test_corpus.py)."""

import functools

import flax.linen as nn
import jax.numpy as jnp


class ShuffleUnit(nn.Module):
  slices: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    if self.slices:
      half = x.shape[-1] // 2
      left, right = x[..., :half], x[..., half:]
    else:
      left, right = jnp.split(x, 2, axis=-1)
    channels = right.shape[-1]
    y = nn.relu(norm()(nn.Conv(channels, (1, 1), use_bias=False)(right)))
    y = norm()(nn.Conv(channels, (3, 3), feature_group_count=channels, use_bias=False)(y))
    y = nn.relu(norm()(nn.Conv(channels, (1, 1), use_bias=False)(y)))
    return jnp.concatenate([left, y], axis=-1)


def channel_shuffle(x, groups=2):
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, groups, c // groups)
  return jnp.swapaxes(x, 3, 4).reshape(n, h, w, c)


class ShuffleNet(nn.Module):
  num_classes: int = 10
  shuffle: bool = False
  slices: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(16, (3, 3), use_bias=False, name='stem')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='stem_bn')(x))
    x = ShuffleUnit(self.slices, name='unit1')(x, train)
    if self.shuffle:
      x = channel_shuffle(x)
    x = ShuffleUnit(self.slices, name='unit2')(x, train)
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def shufflenet(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return ShuffleNet(num_classes)


def shufflenet_slices(image_size=8, in_channels=1, num_classes=10):
  """The same units, the channels split with slices."""
  del image_size, in_channels
  return ShuffleNet(num_classes, slices=True)


def shufflenet_shuffled(image_size=8, in_channels=1, num_classes=10):
  """With ShuffleNet v2's channel shuffle between the units: refused."""
  del image_size, in_channels
  return ShuffleNet(num_classes, shuffle=True)
