"""Channel units, the per-unit width choices, and channel configs.

A *unit* is a set of layer outputs that must share one channel count (design.md, section 2):
a conv and the depthwise conv that follows it, all the outputs added into one residual stream.
A *config* gives every unit its number of active channels; the lower-index channels are the
active ones. Configs are plain ``dict[str, int]`` in the network's unit order, serialised as JSON
objects ``{unit name: channels}``.

During supernet training and greedy slimming each unit of max width C is divided into G groups:
choice k in [k_min, G] keeps ``make_divisible(C * k / G, divisor)`` channels. Distinct channel
counts are the unit's *choices* (for narrow units several k give the same count; sampling is
uniform over the distinct counts, so no count is drawn more often because it repeats).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ChannelConfig = dict  # unit name -> active channels, in the network's unit order.

# Marks an entry of an official ``channel_num_list`` layout that is the number of classes.
CLASSES = '#classes'


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds ``value`` as MobileNet's ``_make_divisible``.

  Nearest multiple of ``divisor``, never below ``min_value`` (default: ``divisor``) and never more
  than 10% below ``value``.
  """
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


@dataclasses.dataclass(frozen=True)
class ChannelUnit:
  name: str
  max_channels: int
  choices: tuple[int, ...]  # ascending distinct channel counts the supernet trains.

  @property
  def min_channels(self) -> int:
    return self.choices[0]


def unit_choices(max_channels: int, groups: int, k_min: int, divisor: int) -> tuple[int, ...]:
  counts = {min(max_channels, make_divisible(max_channels * k / groups, divisor))
            for k in range(k_min, groups + 1)}
  return tuple(sorted(counts))


def min_group_index(groups: int, min_ratio: float) -> int:
  """k_min = ``groups * min_ratio``, which must be a whole number: the narrowest choice is then
  exactly the min width (design.md, section 2: 10 groups for 0.15x-1.5x give k_min = 1).

  A pair that does not agree is refused rather than rounded: 12 groups with 0.15x / 1.5x would
  make k_min 1.2, and rounding it up trained a narrowest width of 0.25x, not 0.15x.
  """
  k_min = groups * min_ratio
  if abs(k_min - round(k_min)) > 1e-6 or round(k_min) < 1:
    fits = [g for g in range(2, 41) if abs(g * min_ratio - round(g * min_ratio)) < 1e-6
            and round(g * min_ratio) >= 1][:4]
    raise ValueError(
        f'{groups} channel groups and a min width of {min_ratio:g} of the max width disagree: '
        f'the narrowest choice would be {k_min:g} groups, not a whole number. Choose groups '
        f'and min_width with groups * min_width / max width whole'
        + (f' (for this ratio: groups {", ".join(map(str, fits))}, ...)' if fits else '')
        + f', or min_width = k / {groups} x max width for k = 1..{groups}')
  return int(round(k_min))


class ChannelSpace:
  """The units of one network and the channel choices of each.

  Args:
    max_widths: unit name -> max (physical) channels, in the network's unit order.
    groups: G, the number of channel groups per unit.
    min_ratio: the narrowest width as a fraction of the max width (min width / max width, e.g.
      0.15x / 1.5x = 0.1), which sets k_min.
    divisor: channel counts are rounded to multiples of this.
    fixed_units: units whose only choice is their max width.
  """

  def __init__(self, max_widths: Mapping[str, int], groups: int = 10, min_ratio: float = 0.1,
               divisor: int = 8, fixed_units: Sequence[str] = ()):
    if groups < 1:
      raise ValueError(f'groups must be >= 1, got {groups}')
    if not 0 < min_ratio <= 1:
      raise ValueError(f'min_ratio (min width / max width) must be in (0, 1], got {min_ratio}')
    self.groups = groups
    self.min_ratio = min_ratio
    self.divisor = divisor
    self.k_min = min_group_index(groups, min_ratio)
    self.units = tuple(
        ChannelUnit(name, int(c), (int(c),) if name in fixed_units
                    else unit_choices(int(c), groups, self.k_min, divisor))
        for name, c in max_widths.items())
    self.unit_names = tuple(u.name for u in self.units)
    self._by_name = {u.name: u for u in self.units}
    # One row per unit, padded with its largest choice, for jitted lookups.
    width = max(len(u.choices) for u in self.units)
    self._choice_table = np.array(
        [u.choices + (u.choices[-1],) * (width - len(u.choices)) for u in self.units], np.int32)
    self._num_choices = np.array([len(u.choices) for u in self.units], np.int32)

  def __len__(self):
    return len(self.units)

  def __getitem__(self, name: str) -> ChannelUnit:
    return self._by_name[name]

  def __repr__(self):
    return (f'ChannelSpace({len(self.units)} units, groups={self.groups}, k_min={self.k_min}, '
            f'divisor={self.divisor})')

  # Configs.

  def max_config(self) -> ChannelConfig:
    return {u.name: u.max_channels for u in self.units}

  def min_config(self) -> ChannelConfig:
    return {u.name: u.min_channels for u in self.units}

  def slimming_candidates(self, config: Mapping[str, int]
                          ) -> list[tuple[str, ChannelConfig]]:
    """One step of greedy slimming's choices: for every unit that can still lose a group, (unit,
    ``config`` with that unit one choice narrower), in unit order."""
    result = []
    for unit in self.units:
      index = unit.choices.index(config[unit.name])
      if index > 0:
        result.append((unit.name, {**config, unit.name: unit.choices[index - 1]}))
    return result

  def validate(self, config: Mapping[str, object], *, where: str = 'channel config'
               ) -> ChannelConfig:
    """Returns ``config`` in unit order as ints, or raises ValueError naming the bad entry.

    Any integer in [1, max] is accepted (published and hand-made configs need not sit on the
    group grid); ``is_on_grid`` tells whether a config is one the supernet trains.
    """
    unknown = [k for k in config if k not in self._by_name]
    if unknown:
      raise ValueError(f'{where}: unknown unit(s) {unknown}; the units are {list(self.unit_names)}')
    missing = [n for n in self.unit_names if n not in config]
    if missing:
      raise ValueError(f'{where}: missing unit(s) {missing}')
    return {u.name: check_channel_count(config[u.name], u, f'{where}: unit {u.name!r}')
            for u in self.units}

  def is_on_grid(self, config: Mapping[str, int]) -> bool:
    return all(config[u.name] in u.choices for u in self.units)

  def to_json(self, config: Mapping[str, int]) -> str:
    return json.dumps(self.validate(config), indent=1)

  def from_json(self, text: str) -> ChannelConfig:
    try:
      loaded = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'channel config is not valid JSON: {e}') from None
    if not isinstance(loaded, dict):
      raise ValueError('a channel config in JSON is an object {unit name: channels}, got '
                       f'{type(loaded).__name__}')
    return self.validate(loaded)

  # Arrays for jitted code.

  def as_arrays(self, config: Mapping[str, int]) -> dict[str, jax.Array]:
    """The config as int32 scalars: the form the masked modules take, one trace for all."""
    return {n: jnp.asarray(config[n], jnp.int32) for n in self.unit_names}

  def matrix(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
    """Configs as an int64 [num_configs, num_units] matrix, columns in unit order."""
    return np.array([[c[n] for n in self.unit_names] for c in configs], np.int64).reshape(
        len(configs), len(self.units))

  def masks(self, config: Mapping[str, jax.Array | int]) -> dict[str, jax.Array]:
    """unit -> boolean mask over its max channels: the first ``channels`` are active."""
    return {u.name: jnp.arange(u.max_channels) < config[u.name] for u in self.units}

  def sample(self, key: jax.Array) -> dict[str, jax.Array]:
    """A random config, each unit's choice drawn independently and uniformly. Jittable."""
    indices = jax.random.randint(key, (len(self.units),), 0, self._num_choices)
    channels = jnp.asarray(self._choice_table)[jnp.arange(len(self.units)), indices]
    return {n: channels[i] for i, n in enumerate(self.unit_names)}


def check_channel_count(value: object, unit: ChannelUnit, where: str) -> int:
  """``value`` as an int if it is a whole number of channels within the unit's max."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{where}: channel count {value!r} is not an integer; valid is an integer '
                     f'in 1..{unit.max_channels}')
  if not 1 <= value <= unit.max_channels:
    raise ValueError(f'{where}: channel count {value} is out of range; valid is 1..'
                     f'{unit.max_channels}')
  return int(value)


def from_channel_num_list(values: Sequence[object], layout: Sequence[str],
                          space: ChannelSpace, num_classes: int) -> ChannelConfig:
  """Reads a list in the official ``channel_num_list`` layout into a config.

  ``layout`` names the unit of each entry (``CLASSES`` for the classifier's outputs). Entries of
  one unit (e.g. the outputs of the blocks of one residual stage) must agree.
  """
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ValueError(f'a channel_num_list is a list of integers, got {type(values).__name__}')
  if len(values) != len(layout):
    raise ValueError(f'channel_num_list has {len(values)} entries; this network takes '
                     f'{len(layout)} ({describe_layout(layout)})')
  config: dict[str, int] = {}
  first_entry: dict[str, int] = {}
  for index, (value, name) in enumerate(zip(values, layout)):
    where = f'channel_num_list entry {index}'
    if name == CLASSES:
      if value != num_classes:
        raise ValueError(f'{where} is the number of classes: got {value!r}, the network has '
                         f'{num_classes}')
      continue
    count = check_channel_count(value, space[name], f'{where} (unit {name!r})')
    if name in config and config[name] != count:
      raise ValueError(f'{where} (unit {name!r}) is {count}, but entry {first_entry[name]} of the '
                       f'same unit is {config[name]}: outputs added into one residual stream '
                       'must have equal channels')
    config.setdefault(name, count)
    first_entry.setdefault(name, index)
  return space.validate(config)


def to_channel_num_list(config: Mapping[str, int], layout: Sequence[str],
                        num_classes: int) -> list[int]:
  """The config in the official ``channel_num_list`` layout."""
  return [num_classes if name == CLASSES else int(config[name]) for name in layout]


def describe_layout(layout: Sequence[str]) -> str:
  return ', '.join('classes' if n == CLASSES else n for n in layout)
