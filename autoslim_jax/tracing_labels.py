"""Axis labels of the tracer (``tracing.py``): a union-find over array axes with sizes, composite
(concatenated) axes and per-class facts, and the small helpers the tracer and its rules share.
"""

from __future__ import annotations

import dataclasses

import jax.extend.core as jcore
import numpy as np

Path = tuple[str, ...]


class TracingError(ValueError):
  """The network cannot be slimmed as traced; the message names the layer and the reason."""


@dataclasses.dataclass
class LabelClass:
  size: int
  producers: list = dataclasses.field(default_factory=list)  # layer indices
  fixed: str | None = None  # why it is fixed
  nonchannel: str | None = None  # what spatial / batch axis it is
  segments: list | None = None  # composite: [(label or None, size)], in channel order


class Labels:
  """Union-find over axis labels; each root carries its class's facts."""

  def __init__(self):
    self.parent: list[int] = []
    self.classes: dict[int, LabelClass] = {}

  def new(self, size: int, nonchannel: str | None = None) -> int | None:
    if not is_axis(size):
      return None
    label = len(self.parent)
    self.parent.append(label)
    self.classes[label] = LabelClass(size, nonchannel=nonchannel)
    return label

  def find(self, label: int) -> int:
    while self.parent[label] != label:
      self.parent[label] = self.parent[self.parent[label]]
      label = self.parent[label]
    return label

  def info(self, label: int) -> LabelClass:
    return self.classes[self.find(label)]

  def unify(self, a: int | None, b: int | None, where: str) -> None:
    if a is None or b is None:
      return
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    ca, cb = self.classes[ra], self.classes[rb]
    assert ca.size == cb.size, (where, ca.size, cb.size)  # jaxprs are shape-checked
    self.parent[rb] = ra
    del self.classes[rb]
    ca.producers += cb.producers
    ca.fixed = ca.fixed or cb.fixed
    ca.nonchannel = ca.nonchannel or cb.nonchannel
    if ca.segments is not None and cb.segments is not None:
      if [s for _, s in ca.segments] != [s for _, s in cb.segments]:
        raise TracingError(f'{where}: joins channel concatenations with different segment '
                           f'sizes {[s for _, s in ca.segments]} and {[s for _, s in cb.segments]}')
      for (x, _), (y, _) in zip(ca.segments, cb.segments):
        self.unify(x, y, where)
    elif cb.segments is not None:
      ca.segments = cb.segments

  def flat_segments(self, label: int, depth: int = 0) -> list[tuple[int | None, int]]:
    """The atomic (root, size) pieces of an axis, in order (one piece unless composite)."""
    if depth > 100:
      raise TracingError('internal: cyclic channel concatenation')
    root = self.find(label)
    segments = self.classes[root].segments
    if segments is None:
      return [(root, self.classes[root].size)]
    pieces = []
    for seg, size in segments:
      pieces += [(None, size)] if seg is None else self.flat_segments(seg, depth + 1)
    return pieces


@dataclasses.dataclass
class Event:
  """An op that is safe only where ``labels`` are not a unit's channels."""
  labels: list
  where: str
  reason: str


@dataclasses.dataclass
class Layer:
  path: Path
  kind: str
  kernel_size: int
  in_label: int | None
  out_label: int | None
  in_channels: int
  out_channels: int
  out_height: int
  out_width: int
  has_bias: bool
  batch_norm: bool = False


def shape_of(v) -> tuple[int, ...]:
  return tuple(getattr(v.aval, 'shape', ()))


def join(path: Path) -> str:
  return '/'.join(path)


def name_stack(eqn, prefix: str) -> str:
  stack = str(eqn.source_info.name_stack)
  return '/'.join(s for s in (prefix, stack) if s)


def describe(eqn, prefix: str) -> str:
  """'module path: primitive (file:line)' for error messages."""
  from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
  line = source_info_util.summarize(eqn.source_info)
  at = f' at {line}' if line else ''
  return f'{name_stack(eqn, prefix) or "<top>"}: {eqn.primitive.name}{at}'


def is_axis(size) -> bool:
  """A size that is an axis, not an inserted 1: above 1, or symbolic (an exported batch)."""
  return not isinstance(size, (int, np.integer)) or size > 1


def sub_jaxpr(eqn):
  for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
    sub = eqn.params.get(key)
    if isinstance(sub, jcore.ClosedJaxpr):
      return sub.jaxpr, sub.consts
    if isinstance(sub, jcore.Jaxpr):
      return sub, ()
  return None
