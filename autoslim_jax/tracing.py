"""Channel units of a plain Flax network, found by tracing it: no rewrite with ``SlimConv``.

Why: rewriting one's own network with ``SlimConv`` / ``SlimDense`` and naming every layer's
units is where people give up, and the PyTorch tracers that do it automatically are where their
users' bug reports pile up. A JAX network is a traceable function, so the coupling of channels
can be read off its jaxpr exactly instead of guessed from module types.

How: ``trace_network`` traces ``module.apply`` on shapes only (``jax.make_jaxpr``; nothing is
compiled), gives every array axis of size > 1 a label and merges labels in a union-find as the
equations demand: operands of an elementwise op share their aligned axes (a residual addition,
a squeeze-and-excite gate, a BatchNorm's statistics and the features they normalise), a
depthwise conv shares its input, output and kernel channel axes, a plain conv or dense layer
shares its input channels with its kernel's input axis and *produces* a new channel axis (its
kernel's output axis). A channel concatenation makes a *composite* axis whose segments are its
inputs' axes, so a conv reading it is governed by every segment's unit; a layer whose output
joins a concatenation, or is split into pieces (``jnp.split``), writes each segment's unit.

A unit is a class of labels that contains a produced axis and is not fixed; fixed are every
axis of the input images (their channels) and of the outputs (the classes). What the analysis
cannot prove to slim exactly is refused, naming the op and its module: reductions, windows,
slices or pads across a unit's channel axis (LayerNorm, GroupNorm, channel attention by
means over channels), reshapes that merge or split it, grouped convs that are neither plain nor
depthwise, contractions over it without a parameter kernel, and any primitive not known here
that touches it.

The code: ``tracing_labels.py`` holds the union-find of labels, ``tracing_rules.py`` one rule
per primitive (supporting a primitive is one function there), this module the walk over the
jaxpr, the resolution of label classes into units and refusals, and the entry point.

The result gives each unit its name (its first producing layer's path), max width and the
(variable path, axis, slice) list it controls, and the layers as ``models.base.LayerRecord``s
in the zoo's format, so ``resources.py`` works on a traced network unchanged.

Size-1 axes carry no label (broadcasting cannot tell them from real channels), so a layer with
one output channel is a fixed size; that is also why a conv reading one channel (a grayscale
image) is a plain conv, never mistaken for a depthwise one: depthwise is read from
``feature_group_count`` alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from autoslim_jax import tracing_labels
from autoslim_jax import tracing_rules
from autoslim_jax import training_mode
from autoslim_jax.models.base import LayerRecord, Network
from autoslim_jax.tracing_labels import (Event, Labels, Layer, Path, TracingError, describe,
                                         join)

TRACE_BATCH = 2  # > 1, so that the batch axis has a label of its own


@dataclasses.dataclass(frozen=True)
class ParamAxis:
  """The part of one variable a unit controls: ``variable[..., start:stop, ...]`` on ``axis``
  (the whole axis unless the axis is a concatenation of several units' channels)."""
  path: Path  # in the variables tree, collection first: ('params', 'conv1', 'kernel')
  axis: int
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class Unit:
  name: str  # the path of the first layer producing it, '/'-joined
  width: int  # the max (traced) channel count
  producers: tuple[Path, ...]  # the conv / dense layers whose outputs are this unit
  params: tuple[ParamAxis, ...]


@dataclasses.dataclass(frozen=True)
class TracedNetwork:
  """What ``trace_network`` found.

  ``input_segments``: for a layer reading a channel concatenation, its input channels as
  ``(unit or None, channels)`` segments; its ``LayerRecord.in_unit`` is then ``None`` (the
  record format has one input unit) and ``resources.ResourceModel`` counts its input channels
  from the segments (``Network.input_segments``).
  ``output_segments``: the same for a layer whose output channels are several units' (added to
  a concatenation, or split into pieces): ``LayerRecord.out_unit`` is then ``None``.
  ``logits_index``: which element of a tuple output is the logits (None: the output is one array).
  ``num_classes``: the logits' last axis.
  ``param_axes``: every variable of the ``params`` collection as its axes of size > 1, each as
  ``(unit or None, channels)`` segments: what ``resources.ResourceModel`` counts the params of a
  traced network from (``Network.param_axes``), so that every parameter is counted at every
  config whatever layer holds it (a BatchNorm anywhere, with or without scale and bias).
  """
  units: tuple[Unit, ...]
  layers: tuple[LayerRecord, ...]
  input_segments: Mapping[Path, tuple[tuple[str | None, int], ...]]
  input_shape: tuple[int, ...]
  logits_index: int | None
  num_classes: int
  param_axes: tuple[tuple[Path, tuple[tuple[tuple[str | None, int], ...], ...]], ...] = ()
  output_segments: Mapping[Path, tuple[tuple[str | None, int], ...]] = dataclasses.field(
      default_factory=dict)

  @property
  def max_widths(self) -> dict[str, int]:
    return {u.name: u.width for u in self.units}

  def resource_network(self, name: str = 'traced') -> Network:
    """A ``Network`` carrying the traced layer table and input segments, enough for
    ``resources.ResourceModel`` without a module (``plain_network.PlainNetwork`` is the whole
    network)."""
    def build(widths):
      raise NotImplementedError('a resource network builds no module; use '
                                'plain_network.PlainNetwork')
    network = Network(name, build, self.max_widths, lambda mult: dict(self.max_widths),
                      tuple(self.input_shape), self.num_classes)
    network.__dict__['layers'] = self.layers  # fills the cached property: nothing to re-trace
    network.input_segments = dict(self.input_segments)
    network.output_segments = dict(self.output_segments)
    network.param_axes = self.param_axes
    return network


# ----------------------------------------------------------------------------------------------
# The tracer proper.


class _Tracer(tracing_rules.Rules):
  """Walks a jaxpr, propagating axis labels equation by equation (each by its primitive's rule:
  ``tracing_rules``)."""

  def __init__(self, variable_paths: Sequence[Path], param_paths: set):
    self.labels = Labels()
    self.events: list[Event] = []
    self.layers: list[Layer] = []
    self.variable_paths = variable_paths
    self.param_paths = param_paths

  # -- helpers

  def fresh(self, shape, nonchannel: str | None = None) -> list:
    return [self.labels.new(s, nonchannel) for s in shape]

  def event(self, labels, where: str, reason: str) -> None:
    labels = [l for l in labels if l is not None]
    if labels:
      self.events.append(Event(labels, where, reason))

  # -- the walk

  def run(self, jaxpr, in_labels: list, in_origins: list, prefix: str) -> tuple[list, list]:
    env, origin = {}, {}

    def read(v):
      if isinstance(v, jcore.Literal):
        shape = np.shape(v.val)
        return self.fresh(shape) if shape else []
      return env[v]

    for v, labels, o in zip(jaxpr.invars, in_labels, in_origins):
      env[v], origin[v] = labels, o
    for v in jaxpr.constvars:
      env[v], origin[v] = self.fresh(v.aval.shape), None
    for eqn in jaxpr.eqns:
      where = describe(eqn, prefix)
      ins = [read(v) for v in eqn.invars]
      ins_origin = [None if isinstance(v, jcore.Literal) else origin.get(v) for v in eqn.invars]
      outs, outs_origin = self.equation(eqn, ins, ins_origin, where, prefix)
      for v, labels, o in zip(eqn.outvars, outs, outs_origin):
        if not isinstance(v, jcore.DropVar):
          env[v], origin[v] = labels, o
    return [read(v) for v in jaxpr.outvars], [
        None if isinstance(v, jcore.Literal) else origin.get(v) for v in jaxpr.outvars]


# ----------------------------------------------------------------------------------------------
# Resolution: classes -> units, events -> refusals, layers -> records.


_HINTS = {
    'reduces over the channel axis of': (
        ' (a LayerNorm, GroupNorm or RMSNorm normalises each position over its channels, so a '
        'slimmed network\'s statistics differ from the max network\'s: use BatchNorm)'),
}


def _resolve(tracer: _Tracer, var_labels, output_labels):
  labels = tracer.labels
  # A merged class lists its producers in the order its labels were unified, which follows the
  # operands' order (``r + y`` or ``y + r``): in program order, a unit is named after the layer
  # producing it first, however its additions are written.
  for cls in labels.classes.values():
    cls.producers.sort()
  for leaf in output_labels:
    for label in leaf:
      if label is not None:
        labels.info(label).fixed = labels.info(label).fixed or 'an output'
  # A fixed concatenation fixes its segments (until nothing changes: segments may nest).
  changed = True
  while changed:
    changed = False
    for root, cls in list(labels.classes.items()):
      if cls.fixed and cls.segments is not None:
        for seg, _ in labels.flat_segments(root):
          if seg is not None and not labels.classes[seg].fixed:
            labels.classes[seg].fixed = cls.fixed
            changed = True

  # A layer whose output channels are a concatenation's (joined with one: GhostNet's first
  # shortcut; or split into pieces: ShuffleNet's channel split) writes each segment's unit: its
  # kernel's output axis is masked and sliced segment by segment, as a kernel reading a
  # concatenation is on its input axis.
  for root, cls in labels.classes.items():
    if cls.producers and cls.segments is not None and not cls.fixed:
      for atom, _ in labels.flat_segments(root):
        if atom is not None:
          labels.classes[atom].producers = sorted(set(labels.classes[atom].producers)
                                                  | set(cls.producers))

  def is_unit(root):
    cls = labels.classes[root]
    return bool(cls.producers) and not cls.fixed and cls.segments is None

  for root, cls in labels.classes.items():
    if is_unit(root) and cls.nonchannel:
      layer = tracer.layers[cls.producers[0]]
      raise TracingError(f'layer {join(layer.path)}: its output channels meet {cls.nonchannel}; '
                         'a channel axis used as a spatial or batch axis cannot be slimmed')

  def units_of(label):
    if label is None:
      return []
    return [s for s, _ in labels.flat_segments(label) if s is not None and is_unit(s)]

  roots = sorted((r for r in labels.classes if is_unit(r)),
                 key=lambda r: labels.classes[r].producers[0])
  names = {}
  for root in roots:
    layer = tracer.layers[labels.classes[root].producers[0]]
    name = join(layer.path) + _piece(labels, layer.out_label, root, is_unit)
    names[root] = name if name not in names.values() else f'{name}#{len(names)}'

  for event in tracer.events:
    touched = [u for l in event.labels for u in units_of(l)]
    if touched:
      hint = _HINTS.get(event.reason, '')
      raise TracingError(f'{event.where}: {event.reason} unit {names[touched[0]]!r}; the masked '
                         f'network would not equal its slim export{hint}')

  params = {root: [] for root in roots}
  for path, var in zip(tracer.variable_paths, var_labels):
    for axis, label in enumerate(var):
      if label is None:
        continue
      start = 0
      for seg, size in labels.flat_segments(label):
        if seg is not None and is_unit(seg):
          params[seg].append(ParamAxis(path, axis, start, start + size))
        start += size

  param_axes = []
  for path, var in zip(tracer.variable_paths, var_labels):
    if path[0] != 'params':
      continue
    axes = tuple(tuple((names[s] if s is not None and is_unit(s) else None, size)
                       for s, size in labels.flat_segments(label))
                 for label in var if label is not None)
    if sum(any(u is not None for u, _ in axis) for axis in axes) > 2:
      raise TracingError(f'parameter {join(path[1:])}: more than two of its axes are channels '
                         'of units; resources are counted as products of two channel counts')
    param_axes.append((path, axes))

  units = tuple(Unit(names[r], labels.classes[r].size,
                     tuple(tracer.layers[i].path for i in labels.classes[r].producers),
                     tuple(params[r])) for r in roots)

  def unit_name(label):
    if label is None:
      return None
    root = labels.find(label)
    return names.get(root) if labels.classes[root].segments is None else None

  records, segments, output_segments = [], {}, {}
  for layer in tracer.layers:
    records.append(LayerRecord(
        path=layer.path, kind=layer.kind, kernel_size=layer.kernel_size,
        in_unit=unit_name(layer.in_label), out_unit=unit_name(layer.out_label),
        in_channels=layer.in_channels, out_channels=layer.out_channels,
        out_height=layer.out_height, out_width=layer.out_width, has_bias=layer.has_bias,
        batch_norm=layer.batch_norm))
    if layer.in_label is not None and labels.info(layer.in_label).segments is not None:
      segments[layer.path] = tuple((names.get(s), size)
                                   for s, size in labels.flat_segments(layer.in_label))
    if layer.out_label is not None and labels.info(layer.out_label).segments is not None:
      output_segments[layer.path] = tuple((names.get(s), size)
                                          for s, size in labels.flat_segments(layer.out_label))
  return units, tuple(records), segments, tuple(param_axes), output_segments


def _piece(labels: Labels, out_label, root, is_unit) -> str:
  """'[start:stop]' of unit ``root`` in a layer output written by several units (its first
  segment), so that the pieces of one layer are told apart; '' otherwise."""
  if out_label is None or labels.info(out_label).segments is None:
    return ''
  pieces = labels.flat_segments(out_label)
  if len({atom for atom, _ in pieces if atom is not None and is_unit(atom)}) < 2:
    return ''
  start = 0
  for atom, size in pieces:
    if atom == root:
      return f'[{start}:{start + size}]'
    start += size
  return ''


# ----------------------------------------------------------------------------------------------
# Entry point.


def _call_kwargs(module: nn.Module) -> dict:
  """The inference mode's arguments (``training_mode``): the inference graph, whose channel
  structure is the training graph's (BatchNorm reads its running statistics)."""
  return training_mode.mode_kwargs(module, False)


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _literals(jaxpr) -> list[tuple[Any, Any]]:
  """Every literal operand of a jaxpr and its sub-jaxprs, in order, with its equation."""
  found = []
  for eqn in jaxpr.eqns:
    found += [(eqn, v.val) for v in eqn.invars if isinstance(v, jcore.Literal)]
    sub = tracing_labels.sub_jaxpr(eqn)
    if sub is not None:
      found += _literals(sub[0])
  return found


def refuse_batch_size_constants(name: str, graph: tuple[int, Any],
                                 other: tuple[int, Any]) -> None:
  """Refuses a module whose inference graph computes with the batch size (a mean over the
  batch, say): a slim network's exported program serves any batch but is traced at a fixed one
  (``plain_network.SlimPlainNetwork.program``), so it would be right at that batch only. Seen
  as a literal that differs between ``graph`` and ``other``, (batch, jaxpr) pairs of the same
  module's inference graph (``training_mode.check_modes``)."""
  (batch, jaxpr), (more, other_jaxpr) = graph, other
  here, there = _literals(jaxpr), _literals(other_jaxpr)
  if len(here) != len(there):
    raise TracingError(
        f'{name}: in inference mode it computes differently for a batch of {batch} and of '
        f"{more} images; a slim network's exported program must serve any batch: compute "
        'inference-mode values image by image')
  for (eqn, a), (_, b) in zip(here, there):
    if np.shape(a) != np.shape(b) or not np.array_equal(a, b):
      raise TracingError(
          f'{describe(eqn, name)}: in inference mode this computes with the batch size '
          f'({np.asarray(a).tolist()} for a batch of {batch}, {np.asarray(b).tolist()} for '
          f"{more}: a mean over the batch axis, say); a slim network's exported program must "
          'serve any batch: compute inference-mode values image by image')


def trace_network(module: nn.Module, input_shape: Sequence[int],
                  call_kwargs: Mapping[str, Any] | None = None) -> TracedNetwork:
  """Finds the channel units of a plain Flax module called on images of ``input_shape``.

  Args:
    module: a ``flax.linen`` module at its max widths, called as ``module(x, **call_kwargs)``.
    input_shape: one image's shape, channels last, e.g. (32, 32, 3).
    call_kwargs: keyword arguments of the call; default: inference mode
      (``training_mode.mode_kwargs``: ``train=False``, ``deterministic=True``, ...).

  The module returns the logits, or a tuple / list whose first element is the logits (other
  elements' axes are fixed as well: callers may read them at every config).

  Raises:
    TracingError: naming the op and module of what cannot be slimmed, and why.
  """
  kwargs = dict(_call_kwargs(module) if call_kwargs is None else call_kwargs)
  images = jax.ShapeDtypeStruct((TRACE_BATCH,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), images)
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  variable_paths = [tuple(_key_name(k) for k in keypath) for keypath, _ in leaves]
  param_paths = {p for p in variable_paths if p[0] == 'params'}

  def apply(variables, x):
    out, _ = module.apply(variables, x, mutable=True, **kwargs)
    return out

  closed, out_tree = jax.make_jaxpr(apply, return_shape=True)(variables, images)
  logits_index = None
  if isinstance(out_tree, (tuple, list)):
    if not out_tree or not isinstance(out_tree[0], jax.ShapeDtypeStruct):
      raise TracingError(f'{type(module).__name__} returns a {type(out_tree).__name__} whose '
                         'first element is not an array; return the logits, or a tuple with '
                         'the logits first')
    logits_index = 0
  elif not isinstance(out_tree, jax.ShapeDtypeStruct):
    raise TracingError(f'{type(module).__name__} returns {type(out_tree).__name__}; return the '
                       'logits, or a tuple with the logits first')
  logits = out_tree if logits_index is None else out_tree[logits_index]
  if logits.shape[:1] != (TRACE_BATCH,) or len(logits.shape) != 2:
    raise TracingError(f'{type(module).__name__} returns logits of shape {logits.shape} for '
                       f'{TRACE_BATCH} images; the logits must be [batch, classes]')

  tracer = _Tracer(variable_paths, param_paths)
  var_labels = [tracer.fresh(np.shape(leaf)) for _, leaf in leaves]
  image_labels = [tracer.labels.new(images.shape[0], 'the batch axis')] + [
      tracer.labels.new(s, 'a spatial axis of the images') for s in images.shape[1:-1]] + [
      tracer.labels.new(images.shape[-1])]
  for label in image_labels:
    if label is not None:
      tracer.labels.info(label).fixed = 'the input images'
  outs, _ = tracer.run(closed.jaxpr, var_labels + [image_labels],
                       list(variable_paths) + [None], '')
  units, records, segments, param_axes, output_segments = _resolve(tracer, var_labels, outs)
  return TracedNetwork(units, records, segments, tuple(input_shape), logits_index,
                       logits.shape[-1], param_axes, output_segments)
