"""A small CNN written with Flax NNX as Flax's documentation writes one (``nnx.Conv``,
``nnx.BatchNorm``, ``nnx.relu``, a residual block, ``nnx.Linear``; training mode by
``model.train()`` / ``model.eval()``), its ``flax.linen`` twin, and a config that runs the whole
pipeline on it (tests/test_nnx.py):

  python -m autoslim_jax.main --config=tests/nnx_network.py --workdir=W

The NNX factory takes ``rngs``: the package builds the module again with ``nnx.Rngs(key)`` for
each initialisation key. The twin has the same layers under the same names, so it has the same
units (stem and block/conv2 share one through the residual) and the same variable tree.
"""

import importlib.util
import os

import flax.linen as nn
from flax import nnx
import jax.numpy as jnp
import ml_collections


class Block(nnx.Module):
  """A residual block: conv2's output is added to its input, so it joins the input's unit."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, channels, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(x + y)


class NNXCNN(nnx.Module):

  def __init__(self, in_channels: int, num_classes: int, *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(in_channels, 16, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.block = Block(16, rngs=rngs)
    self.down = nnx.Conv(16, 32, kernel_size=(3, 3), strides=2, use_bias=False, rngs=rngs)
    self.down_bn = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(32, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem(x)))
    x = self.block(x)
    x = nnx.relu(self.down_bn(self.down(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))  # global mean pool


def nnx_cnn(image_size=8, in_channels=1, num_classes=10, rngs=None):
  """The factory: the NNX module at its max widths; image_size and in_channels give the images
  it is traced on; ``rngs`` (given by the package at each initialisation) draws its weights."""
  del image_size  # the module works on any image size
  return NNXCNN(in_channels, num_classes, rngs=rngs or nnx.Rngs(0))


def nnx_cnn_without_rngs(image_size=8, in_channels=1, num_classes=10):
  """Builds its module from a fixed seed: every initialisation key gives the same weights."""
  del image_size
  return NNXCNN(in_channels, num_classes, rngs=nnx.Rngs(0))


class TrainArgument(nnx.Module):
  """The mode as a call argument, BatchNorm told at its call (linen's habit, in NNX): the
  package passes ``train`` as well as calling ``train()`` / ``eval()``."""

  def __init__(self, in_channels: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(in_channels, 16, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    return self.head(jnp.mean(x, axis=(1, 2)))


def train_argument(image_size=8, in_channels=1, num_classes=10):
  del image_size
  return TrainArgument(in_channels, num_classes, rngs=nnx.Rngs(0))


class EvalModeArgument(TrainArgument):
  """A call argument of the author's own name, True in inference (``mode_argument='not
  eval_mode'``)."""

  def __call__(self, x, eval_mode: bool = True):  # pylint: disable=arguments-renamed
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=eval_mode))
    return self.head(jnp.mean(x, axis=(1, 2)))


def eval_mode_argument(image_size=8, in_channels=1, num_classes=10):
  del image_size
  return EvalModeArgument(in_channels, num_classes, rngs=nnx.Rngs(0))


class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    y = nn.relu(norm('bn1')(nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)))
    y = norm('bn2')(nn.Conv(16, (3, 3), use_bias=False, name='conv2')(y))
    return nn.relu(x + y)


class LinenTwin(nn.Module):
  """NNXCNN in flax.linen, layer for layer."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    x = nn.relu(norm('stem_bn')(nn.Conv(16, (3, 3), use_bias=False, name='stem')(x)))
    x = LinenBlock(name='block')(x, train)
    x = nn.relu(norm('down_bn')(nn.Conv(32, (3, 3), strides=2, use_bias=False, name='down')(x)))
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def linen_twin(image_size=8, in_channels=1, num_classes=10):
  del image_size, in_channels
  return LinenTwin(num_classes)


class WithLayerNorm(nnx.Module):
  """Normalises over channels (nnx.LayerNorm): refused, naming the layer."""

  def __init__(self, in_channels: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, 16, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.norm(nnx.relu(self.bn(self.conv(x))))
    return self.head(jnp.mean(x, axis=(1, 2)))


class WithDropout(nnx.Module):
  """Dropout before the classifier, active after ``train()``: refused, naming the layer."""

  def __init__(self, in_channels: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, 16, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.head = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.head(self.drop(jnp.mean(x, axis=(1, 2))))


def with_layer_norm(image_size=8, in_channels=1, num_classes=10):
  del image_size
  return WithLayerNorm(in_channels, num_classes, rngs=nnx.Rngs(0))


def with_dropout(image_size=8, in_channels=1, num_classes=10):
  del image_size
  return WithDropout(in_channels, num_classes, rngs=nnx.Rngs(0))


def get_config():
  """tests/plain_cnn.py's config (the quickstart's recipe) on ``nnx_cnn``."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plain_cnn.py')
  spec = importlib.util.spec_from_file_location('_plain_cnn_config', path)
  plain_cnn = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plain_cnn)
  config = plain_cnn.get_config()
  config.model = f'{os.path.abspath(__file__)}:nnx_cnn'
  config.model_kwargs = ml_collections.ConfigDict(
      {'image_size': 8, 'in_channels': 1, 'num_classes': 10})
  return config
