"""Masked, static-shape Flax layers.

Every layer is built at its physical width (the max width in a supernet) and takes the active
channel config at call time, so one jitted graph serves every config. A layer's output channels
belong to ``out_unit``; those beyond the unit's active count are multiplied by zero *after*
BatchNorm and the activation (before them BatchNorm's bias would turn zeros into non-zeros).
Multiplying by an exact zero makes masked outputs exactly zero and sends them exactly zero
gradient; BatchNorm of an all-zero channel sees variance 0 and returns 0 (epsilon keeps it
finite).

``in_unit`` / ``out_unit`` name the units of the input and output channels (``None``: a fixed
size, such as the RGB input or the classes). The resource model and the slim export read them.
Called with ``config=None`` a layer is a plain layer: that is how exported slim networks run.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Config = Mapping[str, jax.Array | int] | None

# The reference (PyTorch / torchvision) initialisation of MobileNets and ResNets: He-normal over
# fan-out for convs, N(0, 0.01) for the classifier. Flax's default (LeCun over fan-in) gives the
# CIFAR MobileNet v2 a gradient norm ~4x larger at the first step, and SGD at lr 0.1 diverges.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
DENSE_INIT = nn.initializers.normal(0.01)


def mask_channels(x: jax.Array, unit: str | None, config: Config) -> jax.Array:
  """Zeroes the channels (last axis) of ``x`` beyond the unit's active count."""
  if config is None or unit is None:
    return x
  active = jnp.arange(x.shape[-1]) < config[unit]
  return x * active.astype(x.dtype)


_native_conv_forms = False  # set by native_conv_forms()


def use_cpu_conv_forms() -> bool:
  """On XLA:CPU, depthwise convs as shifted multiply-adds (the grouped conv is ~10x slower) and
  1x1 convs as matrix products (the conv is 2-6x slower): bench/bench_conv_forms.py.
  Accelerators keep the native convs, and so do programs traced under ``native_conv_forms``."""
  return jax.default_backend() == 'cpu' and not _native_conv_forms


@contextlib.contextmanager
def native_conv_forms():
  """Traces every conv as a convolution on any backend: deployed programs (ONNX, jax.export)
  run where XLA:CPU's forms mean nothing, and a runtime's own conv kernels are the fast ones."""
  global _native_conv_forms
  previous, _native_conv_forms = _native_conv_forms, True
  try:
    yield
  finally:
    _native_conv_forms = previous


class ShiftedDepthwiseConv(nn.Module):
  """A depthwise conv as ``kernel_size**2`` strided slices times per-channel weights.

  Same parameters (``kernel`` of shape (k, k, 1, C), same initialiser, optional ``bias``) and
  same result as ``nn.Conv(C, (k, k), feature_group_count=C)`` with symmetric padding, so
  checkpoints and exports do not depend on which form ran.
  """
  kernel_size: int
  strides: int
  padding: int
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s, p = self.kernel_size, self.strides, self.padding
    channels = x.shape[-1]
    kernel = self.param('kernel', CONV_INIT, (k, k, 1, channels), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    height = (x.shape[1] + 2 * p - k) // s + 1
    width = (x.shape[2] + 2 * p - k) // s + 1
    out = None
    for i in range(k):
      for j in range(k):
        window = jax.lax.slice(padded, (0, i, j, 0),
                               (x.shape[0], i + (height - 1) * s + 1, j + (width - 1) * s + 1,
                                channels), (1, s, s, 1))
        term = window * kernel[i, j, 0]
        out = term if out is None else out + term
    if self.use_bias:
      out = out + self.param('bias', nn.initializers.zeros, (channels,), jnp.float32).astype(
          self.dtype)
    return out


class PointwiseConvAsDot(nn.Module):
  """A 1x1 conv as a matrix product over the channel axis (strided by subsampling first).

  Same parameters (``kernel`` of shape (1, 1, C_in, C_out), same initialiser, optional
  ``bias``) and same result as ``nn.Conv(C_out, (1, 1), strides)``.
  """
  features: int
  strides: int = 1
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', CONV_INIT, (1, 1, x.shape[-1], self.features), jnp.float32)
    if self.strides > 1:
      x = x[:, ::self.strides, ::self.strides, :]
    out = jnp.dot(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
    if self.use_bias:
      out = out + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(
          self.dtype)
    return out


class SlimConv(nn.Module):
  """Conv -> BatchNorm -> activation -> channel mask, writing into ``out_unit``.

  A depthwise conv (``depthwise=True``) has as many channels as its input and belongs to the
  same unit (``in_unit == out_unit``); ``features`` must then equal the input channels.
  """
  features: int
  in_unit: str | None
  out_unit: str | None
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  activation: Callable[[jax.Array], jax.Array] | None = nn.relu
  batch_norm: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, config: Config = None, train: bool = False) -> jax.Array:
    if self.depthwise and (self.in_unit != self.out_unit or x.shape[-1] != self.features):
      raise ValueError(f'{self.path}: a depthwise conv keeps its input unit and width; got '
                       f'in_unit={self.in_unit!r}, out_unit={self.out_unit!r}, '
                       f'{x.shape[-1]} input channels, features={self.features}')
    pad = (self.kernel_size - 1) // 2  # symmetric, as in the reference (PyTorch) networks
    if self.depthwise and use_cpu_conv_forms():
      x = ShiftedDepthwiseConv(self.kernel_size, self.strides, pad, use_bias=not self.batch_norm,
                               dtype=self.dtype, name='conv')(x)
    elif self.kernel_size == 1 and not self.depthwise and use_cpu_conv_forms():
      x = PointwiseConvAsDot(self.features, self.strides, use_bias=not self.batch_norm,
                             dtype=self.dtype, name='conv')(x)
    else:
      x = nn.Conv(
          self.features, (self.kernel_size, self.kernel_size), strides=self.strides,
          padding=((pad, pad), (pad, pad)),
          feature_group_count=x.shape[-1] if self.depthwise else 1,
          use_bias=not self.batch_norm, kernel_init=CONV_INIT, dtype=self.dtype, name='conv')(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype, name='bn')(x)
    if self.activation is not None:
      x = self.activation(x)
    return mask_channels(x, self.out_unit, config)


class SlimDense(nn.Module):
  """A dense layer whose inputs belong to ``in_unit``; its outputs are a fixed size by default
  (the classifier: classes are never slimmed) or a unit's."""
  features: int
  in_unit: str | None
  out_unit: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, config: Config = None, train: bool = False) -> jax.Array:
    del train  # same in both modes; the argument keeps every slim layer's signature alike
    x = nn.Dense(self.features, kernel_init=DENSE_INIT, dtype=self.dtype, name='dense')(x)
    return mask_channels(x, self.out_unit, config)


SLIM_LAYER_TYPES = (SlimConv, SlimDense)
