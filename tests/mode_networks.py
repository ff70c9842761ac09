"""Small plain Flax CNNs written the ways people switch (or forget to switch) training mode, as
model factories (``tests/mode_networks.py:NAME`` on the command line): the ones the package
runs, and the ones it must refuse before training (tests/test_training_mode.py)."""

import importlib.util
import os

import flax.linen as nn
import jax.numpy as jnp


def _head(x, num_classes):
  return nn.Dense(num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


class TrainingArgument(nn.Module):
  """``training`` instead of ``train``, as Keras-minded code writes it."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, training: bool = False):
    x = nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not training, name='bn1')(x))
    x = nn.Conv(32, (3, 3), strides=2, use_bias=False, name='conv2')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not training, name='bn2')(x))
    return _head(x, self.num_classes)


class DeterministicArgument(nn.Module):
  """``deterministic`` (True in inference), the BatchNorm mode given at the call."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    x = nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(name='bn1')(x, use_running_average=deterministic))
    return _head(x, self.num_classes)


class EvalModeArgument(nn.Module):
  """A mode argument under a name of the author's own, True in inference: found only when the
  config names it (``config.mode_argument = 'not eval_mode'``)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, eval_mode: bool = True):
    x = nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=eval_mode, name='bn1')(x))
    y = nn.Conv(16, (3, 3), use_bias=False, name='conv2')(x)
    x = x + nn.BatchNorm(use_running_average=eval_mode, name='bn2')(y)
    return _head(nn.relu(x), self.num_classes)


class NoModeArgument(nn.Module):
  """BatchNorm fixed in inference mode and no way to switch it: the supernet would train on its
  initial running averages."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='bn1')(x))
    return _head(x, self.num_classes)


class PmapBatchNorm(nn.Module):
  """Written for ``pmap``, as Flax's old ImageNet example: BatchNorm reduces over axis 'batch'."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name='batch', name='bn1')(x)
    return _head(nn.relu(x), self.num_classes)


class WithDropout(nn.Module):
  """Dropout before the classifier."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (3, 3), use_bias=False, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='bn1')(x))
    x = nn.Dropout(0.2, deterministic=not train, name='drop')(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, name='head')(x)


class NoBatchNorm(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(16, (3, 3), name='conv1')(x))
    return _head(x, self.num_classes)


def _factory(cls):
  def factory(image_size=8, in_channels=1, num_classes=10):
    del image_size, in_channels  # the images the module is traced on
    return cls(num_classes)
  factory.__name__ = cls.__name__
  return factory


training_argument = _factory(TrainingArgument)
deterministic_argument = _factory(DeterministicArgument)
eval_mode_argument = _factory(EvalModeArgument)
no_mode_argument = _factory(NoModeArgument)
pmap_batchnorm = _factory(PmapBatchNorm)
with_dropout = _factory(WithDropout)
no_batchnorm = _factory(NoBatchNorm)


def get_config():
  """tests/plain_cnn.py's config (the quickstart's recipe) on ``pmap_batchnorm``
  (``--config.model=...:NAME`` for another)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plain_cnn.py')
  spec = importlib.util.spec_from_file_location('_plain_cnn_config', path)
  plain_cnn = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plain_cnn)
  config = plain_cnn.get_config()
  config.model = f'{os.path.abspath(__file__)}:pmap_batchnorm'
  return config
