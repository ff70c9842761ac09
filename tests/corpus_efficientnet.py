"""Corpus: an EfficientNet-B0-style network, scaled down: MBConv blocks (1x1 expansion, depthwise
conv, squeeze-and-excite, linear 1x1 projection) with swish, and drop-connect on the residual
branch that is random only in training (``deterministic=not train``).

``efficientnet`` has drop-connect rate 0 (the package runs no random layers yet);
``efficientnet_drop_connect`` keeps EfficientNet's 0.2, and ``efficientnet_rng`` draws its own
drop-connect mask with ``make_rng``: both are refused before training (tests/test_corpus.py).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


class SqueezeExcite(nn.Module):
  reduced: int

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.swish(nn.Conv(self.reduced, (1, 1), name='reduce')(s))
    return x * nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), name='expand')(s))


class MBConv(nn.Module):
  features: int
  expand_ratio: int
  strides: int = 1
  drop_connect: float = 0.0
  own_rng: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.99,
                             epsilon=1e-3)
    inputs = x
    hidden = x.shape[-1] * self.expand_ratio
    if self.expand_ratio != 1:
      x = nn.swish(norm(name='expand_bn')(
          nn.Conv(hidden, (1, 1), use_bias=False, name='expand')(x)))
    x = nn.Conv(hidden, (3, 3), strides=self.strides, feature_group_count=hidden,
                use_bias=False, name='depthwise')(x)
    x = nn.swish(norm(name='depthwise_bn')(x))
    x = SqueezeExcite(max(4, inputs.shape[-1] // 4), name='se')(x)
    x = norm(name='project_bn')(nn.Conv(self.features, (1, 1), use_bias=False,
                                        name='project')(x))
    if self.strides == 1 and inputs.shape[-1] == self.features:
      if self.drop_connect > 0 and self.own_rng and train:
        keep = 1.0 - self.drop_connect
        mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0], 1, 1, 1))
        x = x / keep * mask
      elif self.drop_connect > 0:
        x = nn.Dropout(self.drop_connect, broadcast_dims=(1, 2, 3),
                       name='drop_connect')(x, deterministic=not train)
      x = x + inputs
    return x


class EfficientNet(nn.Module):
  num_classes: int = 10
  drop_connect: float = 0.0
  own_rng: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), use_bias=False, name='stem')(x)
    x = nn.swish(nn.BatchNorm(use_running_average=not train, name='stem_bn')(x))
    # (features, expansion, stride) per block, as B0's first stages, narrower.
    for i, (features, ratio, strides) in enumerate(((8, 1, 1), (16, 4, 2), (16, 2, 1))):
      x = MBConv(features, ratio, strides, self.drop_connect, self.own_rng,
                 name=f'block{i + 1}')(x, train)
    x = nn.Conv(32, (1, 1), use_bias=False, name='head_conv')(x)
    x = nn.swish(nn.BatchNorm(use_running_average=not train, name='head_bn')(x))
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def efficientnet(image_size=8, in_channels=1, num_classes=10, drop_connect=0.0):
  del image_size, in_channels
  return EfficientNet(num_classes, drop_connect)


def efficientnet_drop_connect(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return EfficientNet(num_classes, 0.2)


def efficientnet_rng(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return EfficientNet(num_classes, 0.2, own_rng=True)
