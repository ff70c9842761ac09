"""Corpus: a pre-activation ResNet / WideResNet (BN-ReLU-conv): each BatchNorm reads a block's
input (a residual sum), not a conv's output; the shortcut is projected from the activated input
where the width or stride changes."""

import flax.linen as nn


class WideBasic(nn.Module):
  features: int
  strides: int = 1
  train: bool = False

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.BatchNorm(use_running_average=not self.train, name=name)
    out = nn.relu(norm('bn1')(x))
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = nn.Conv(self.features, (1, 1), self.strides, use_bias=False,
                         name='shortcut')(out)
    else:
      shortcut = x
    y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False,
                name='conv1')(out)
    y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False,
                name='conv2')(nn.relu(norm('bn2')(y)))
    return y + shortcut


class WideResNet(nn.Module):
  widths: tuple = (8, 16)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, name='stem')(x)
    for i, width in enumerate(self.widths):
      x = WideBasic(width, 1 if i == 0 else 2, train, name=f'block{i + 1}')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='final_bn')(x))
    return nn.Dense(self.num_classes, name='head')(x.mean(axis=(1, 2)))


def preact_resnet(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return WideResNet(num_classes=num_classes)
