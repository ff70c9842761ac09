"""What every slimmable network provides, and the layer table read off its Flax module.

A network is described by a ``Network``: a function building its Flax module at given physical
widths (unit name -> channels), its max widths, the uniform width-multiplier configs, its input
shape and classes, and optionally the official ``channel_num_list`` layout. Everything else (the
channel space, resources, slim export) is generic: it reads the *layer table*, recorded by tracing
the module once and noting every ``SlimConv`` / ``SlimDense`` call with its units and shapes.
A user's own network needs nothing more than a ``Network`` built from these layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoslim_jax import channels as channels_lib
from autoslim_jax import layers


@dataclasses.dataclass(frozen=True)
class LayerRecord:
  """One conv or dense layer of a network, at its physical (max) widths."""
  path: tuple[str, ...]  # the layer module's path in the params tree
  kind: str  # 'conv', 'depthwise' or 'dense'
  kernel_size: int  # 1 for dense
  in_unit: str | None  # None: a fixed size (e.g. RGB)
  out_unit: str | None  # None: a fixed size (e.g. classes)
  in_channels: int
  out_channels: int
  out_height: int  # 1 for dense
  out_width: int
  has_bias: bool
  batch_norm: bool


def trace_layers(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[LayerRecord, ...]:
  """Records every slimmable layer ``module`` calls on one image of ``input_shape``."""
  records = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    layer = context.module
    if context.method_name == '__call__' and isinstance(layer, layers.SLIM_LAYER_TYPES):
      x = args[0]
      if isinstance(layer, layers.SlimConv):
        kind = 'depthwise' if layer.depthwise else 'conv'
        kernel, has_bias, batch_norm = layer.kernel_size, not layer.batch_norm, layer.batch_norm
      else:
        kind, kernel, has_bias, batch_norm = 'dense', 1, True, False
      height, width = (out.shape[1], out.shape[2]) if out.ndim == 4 else (1, 1)
      records.append(LayerRecord(
          path=tuple(layer.path), kind=kind, kernel_size=kernel, in_unit=layer.in_unit,
          out_unit=layer.out_unit, in_channels=x.shape[-1], out_channels=out.shape[-1],
          out_height=height, out_width=width, has_bias=has_bias, batch_norm=batch_norm))
    return out

  with nn.intercept_methods(record):
    # Shapes only, built inside the traced function: no array is created, nothing compiles
    # (the config checks that read the layer table come before any compilation).
    jax.eval_shape(lambda images: module.init(jax.random.key(0), images, train=False),
                   jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32))
  return tuple(records)


class Network:
  """A slimmable network family member: module builder, units and layout.

  Args:
    name: the registry name.
    build: physical widths (unit -> channels) -> Flax module whose ``__call__(images, config,
      train)`` uses ``SlimConv`` / ``SlimDense`` layers.
    max_widths: unit -> max channels, in the network's unit order (the supernet's widths).
    width_config: width multiplier -> the uniform network's channels per unit.
    input_shape: (height, width, channels) of one image.
    num_classes: classifier outputs.
    official_layout: the unit of each entry of an official ``channel_num_list``
      (``channels.CLASSES`` for the classes), if the network has one.
    max_width_mult: the width multiplier of ``max_widths``.
  """

  def __init__(self, name: str, build: Callable[[Mapping[str, int]], nn.Module],
               max_widths: Mapping[str, int], width_config: Callable[[float], dict[str, int]],
               input_shape: tuple[int, int, int], num_classes: int,
               official_layout: tuple[str, ...] | None = None, max_width_mult: float = 1.0,
               description: str = ''):
    self.name = name
    # config.mode_argument of a plain module, which rebuilds it with ``name`` (models).
    self.mode_argument = ''
    self.build = build
    self.max_widths = dict(max_widths)
    self._width_config = width_config
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self.official_layout = official_layout
    self.max_width_mult = max_width_mult
    self.description = description
    # Layer path -> its input channels as (unit or None, channels) segments, for a layer that
    # reads a channel concatenation (its LayerRecord has one in_unit, None); the zoo has none.
    self.input_segments: dict[tuple[str, ...], tuple[tuple[str | None, int], ...]] = {}
    # The same for a layer whose output channels are several units' (its out_unit is None).
    self.output_segments: dict[tuple[str, ...], tuple[tuple[str | None, int], ...]] = {}
    # Units kept at their max width everywhere: never sampled narrower, slimmed or scaled by a
    # uniform width (config.fixed_units; fix_units).
    self.fixed_units: tuple[str, ...] = ()

  def __repr__(self):
    return (f'Network({self.name!r}, {self.description or ""} max width {self.max_width_mult}x, '
            f'input {self.input_shape}, {self.num_classes} classes, {len(self.max_widths)} units)')

  @property
  def unit_names(self) -> tuple[str, ...]:
    return tuple(self.max_widths)

  def supernet(self) -> nn.Module:
    """The masked network at max widths: one module, every config."""
    return self.build(self.max_widths)

  def slim_module(self, config: Mapping[str, int]) -> nn.Module:
    """A plain network whose layers have exactly ``config``'s channels."""
    return self.build(self.channel_space().validate(config))

  def channel_space(self, groups: int = 10, min_ratio: float = 0.1, divisor: int = 8
                    ) -> channels_lib.ChannelSpace:
    return channels_lib.ChannelSpace(self.max_widths, groups, min_ratio, divisor,
                                     self.fixed_units)

  def fix_units(self, names) -> None:
    """Keeps units ``names`` at their max width in every space, sample, search step and
    uniform baseline of this network (a layer that must stay whole, say a stem a deployment
    target requires)."""
    unknown = [name for name in names if name not in self.max_widths]
    if unknown:
      raise ValueError(f'config.fixed_units: unknown unit(s) {unknown} of {self.name}; the units '
                       f'are {list(self.max_widths)}')
    self.fixed_units = tuple(names)

  @functools.cached_property
  def layers(self) -> tuple[LayerRecord, ...]:
    records = trace_layers(self.supernet(), self.input_shape)
    check_layer_units(self.name, records, self.max_widths)
    return records

  def init(self, key: jax.Array, batch_size: int = 1) -> dict:
    """Supernet variables (params and batch_stats)."""
    init = jax.jit(functools.partial(self.supernet().init, train=False))
    return init(key, jnp.zeros((batch_size,) + self.input_shape, jnp.float32))

  def uniform_config(self, width_mult: float) -> dict[str, int]:
    """The uniform width-multiplier network as a config of this supernet."""
    if width_mult <= 0:
      raise ValueError(f'width multiplier must be positive, got {width_mult}')
    config = {**self._width_config(width_mult),
              **{name: self.max_widths[name] for name in self.fixed_units}}
    return self.channel_space().validate(
        config, where=f'{width_mult}x uniform config of the {self.max_width_mult}x {self.name}')

  def config_from_list(self, values) -> dict[str, int]:
    """A config from a list in the official ``channel_num_list`` layout."""
    if self.official_layout is None:
      raise ValueError(f'{self.name} has no official channel_num_list layout; give a JSON '
                       f'object {{unit: channels}} with units {list(self.unit_names)}')
    return channels_lib.from_channel_num_list(values, self.official_layout, self.channel_space(),
                                              self.num_classes)

  def config_to_list(self, config: Mapping[str, int]) -> list[int]:
    if self.official_layout is None:
      raise ValueError(f'{self.name} has no official channel_num_list layout')
    return channels_lib.to_channel_num_list(self.channel_space().validate(config),
                                            self.official_layout, self.num_classes)


def check_layer_units(name: str, records, max_widths: Mapping[str, int]) -> None:
  """Every layer's unit widths agree with the unit's max, and every unit has a layer."""
  for r in records:
    for unit, size, side in ((r.in_unit, r.in_channels, 'input'),
                             (r.out_unit, r.out_channels, 'output')):
      if unit is None:
        continue
      if unit not in max_widths:
        raise ValueError(f'{name}: layer {"/".join(r.path)} names unknown {side} unit {unit!r}')
      if size != max_widths[unit]:
        raise ValueError(f'{name}: layer {"/".join(r.path)} has {size} {side} channels but its '
                         f'unit {unit!r} has {max_widths[unit]}')
  written = {r.out_unit for r in records}
  unused = [u for u in max_widths if u not in written]
  if unused:
    raise ValueError(f'{name}: unit(s) {unused} are declared but no layer writes them')
