"""Corpus: GhostNet-style modules: a primary 1x1 conv, a cheap depthwise conv on its output, the
two concatenated; a depthwise conv downsamples the concatenation, and the head splits the last
module's output into its primary and cheap halves (``jnp.split`` along channels), pooled two
ways. Variants with GhostNet's identity shortcuts: around a ghost module, and from a plain conv
to a ghost module (GhostNet's first bottleneck: the stem then writes the concatenation's two
segments, one unit)."""

import functools

import flax.linen as nn
import jax.numpy as jnp


class GhostModule(nn.Module):
  features: int
  relu: bool = True

  @nn.compact
  def __call__(self, x, train=False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    act = nn.relu if self.relu else (lambda v: v)
    primary = act(norm()(nn.Conv(self.features // 2, (1, 1), use_bias=False)(x)))
    cheap = nn.Conv(self.features // 2, (3, 3), feature_group_count=self.features // 2,
                    use_bias=False)(primary)
    return jnp.concatenate([primary, act(norm()(cheap))], axis=-1)


class GhostNet(nn.Module):
  num_classes: int = 10
  residual: str = ''  # 'ghost': a residual around ghost1b; 'stem': one from the stem

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8 if self.residual != 'stem' else 16, (3, 3), use_bias=False, name='stem')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='stem_bn')(x))
    y = GhostModule(16, name='ghost1')(x, train)
    x = x + y if self.residual == 'stem' else y
    if self.residual == 'ghost':
      x = x + GhostModule(16, relu=False, name='ghost1b')(x, train)
    x = nn.Conv(16, (3, 3), strides=2, feature_group_count=16, use_bias=False, name='down')(x)
    x = nn.BatchNorm(use_running_average=not train, name='down_bn')(x)
    x = GhostModule(32, relu=False, name='ghost2')(x, train)
    primary, cheap = jnp.split(x, 2, axis=-1)
    pooled = jnp.concatenate([primary.mean(axis=(1, 2)), cheap.max(axis=(1, 2))], axis=-1)
    return nn.Dense(self.num_classes, name='head')(pooled)


def ghostnet(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return GhostNet(num_classes)


def ghostnet_residual(image_size=8, in_channels=1, num_classes=10):
  """GhostNet's identity shortcut between two ghost modules: supported."""
  del image_size, in_channels
  return GhostNet(num_classes, residual='ghost')


def ghostnet_stem_residual(image_size=8, in_channels=1, num_classes=10):
  """GhostNet's first bottleneck: a plain conv's output plus a ghost module's."""
  del image_size, in_channels
  return GhostNet(num_classes, residual='stem')
