"""Retraining the searched configs from scratch, and the uniform baseline at the same budget.

``individual`` mode trains every searched config as a network of its own with the ``retrain``
recipe, and beside it the uniform width-multiplier network whose value of the target's metric
(MACs, params, memory or measured latency) is closest to the searched net's without exceeding the
target's budget (the width found by bisection), so every target has a baseline trained the same
way. With ``retrain.side_by_side`` (the default) all of them train side by side in one compiled
program, each with its own weights, BatchNorm statistics and optimizer state, on the same batches:
the masked supernet at each network's config, its channels beyond the config zero and kept zero,
which computes what the physically slim network computes (tests/test_side_by_side.py); otherwise
each is trained as a physically slim network with a program of its own (a compile each, smaller
steps). ``joint`` mode trains one slimmable network over the
searched configs together (the largest learns from the labels, the others by inplace
distillation), and one over the uniform configs as its baseline.

Every run lives in its own folder under ``workdir`` and resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from autoslim_jax import export
from autoslim_jax import input_pipeline
from autoslim_jax import parallel
from autoslim_jax import plain_network
from autoslim_jax import resources as resources_lib
from autoslim_jax import steps
from autoslim_jax import train
from autoslim_jax.models.base import Network

FAMILIES = ('autoslim', 'uniform')


def uniform_width_for(network: Network, metric: str, value: float, budget: float | None = None,
                      measure: Callable[[Mapping[str, int]], float] | None = None,
                      iterations: int = 40) -> float:
  """The width multiplier whose uniform network's ``metric`` (macs, params, memory, or
  latency_ms through ``measure``) is closest to ``value``, never above ``budget`` (default:
  ``value``).

  The metric grows with the width in steps (channels are rounded to multiples of 8): bisection
  finds the widest width at or under ``value`` and the narrowest above it; the latter wins only
  if it is closer and still within the budget.
  """
  budget = value if budget is None else budget
  if metric == 'latency_ms':
    if measure is None:
      raise ValueError('a latency baseline needs a latency measurement')
    metric_of = lambda width: measure(network.uniform_config(width))
  else:
    resource_model = resources_lib.ResourceModel(network)
    metric_of = lambda width: resource_model(network.uniform_config(width))[metric]
  low, high = 1e-3, network.max_width_mult
  narrowest = metric_of(low)
  if narrowest > value and metric == 'latency_ms':
    # Measured, not counted: the searched net's time and the narrowest uniform net's can trade
    # places from one measurement to the next (small nets, a busy host). The closest uniform
    # net is the narrowest one.
    logging.warning('no uniform %s measured at most %g ms (the narrowest: %g ms); its latency '
                    'baseline is the narrowest uniform net', network.name, value, narrowest)
    return low
  if narrowest > value:
    raise ValueError(f'no uniform {network.name} has {metric} at most {value:g} (the narrowest '
                     f'has {narrowest:g})')
  if metric_of(high) <= value:
    return high
  for _ in range(iterations):
    middle = (low + high) / 2
    low, high = (middle, high) if metric_of(middle) <= value else (low, middle)
  high_value, low_value = metric_of(high), metric_of(low)
  best = high if high_value <= budget and high_value - value < value - low_value else low
  readable = round(best, 4)  # a width a person can type, when it builds the same network
  same = network.uniform_config(readable) == network.uniform_config(best)
  return readable if same else best


def slim_step_factory(module, network: Network, cfg: ml_collections.ConfigDict, mesh,
                      configs: Sequence[Mapping[str, int]] | None, names: Sequence[str]):
  """``make_step()`` for ``train.fit``: a plain slim network (``configs`` None) or a
  slimmable one over fixed ``configs`` (largest first: it learns from the labels)."""
  if configs is None:
    draw = lambda seed, step, device: [None]
  else:
    space = network.channel_space()
    arrays = [space.as_arrays(c) for c in configs]
    draw = lambda seed, step, device: arrays
  return lambda: steps.make_distillation_step(module, network.num_classes, cfg, draw, names,
                                              mesh)


def train_slim(config: ml_collections.ConfigDict, workdir: str, network: Network,
               channels: Mapping[str, int], source: input_pipeline.DataSource,
               name: str, stop_after_step: int | None = None, restore_only: bool = False
               ) -> steps.TrainState:
  """Trains (or resumes, or restores) one physically slim network with the retrain recipe."""
  module = network.slim_module(channels)
  mesh = parallel.make_mesh()
  return train.fit(f'retrain {name}', config.retrain, config, workdir, network, module,
                   slim_step_factory(module, network, config.retrain, mesh, None, ['net']),
                   source, None, stop_after_step, restore_only)


def train_joint(config: ml_collections.ConfigDict, workdir: str, network: Network,
                configs: Sequence[Mapping[str, int]], names: Sequence[str],
                source: input_pipeline.DataSource, name: str,
                stop_after_step: int | None = None, restore_only: bool = False
                ) -> steps.TrainState:
  """Trains one slimmable network over ``configs`` (sorted by MACs, largest first)."""
  module = network.supernet()
  mesh = parallel.make_mesh()
  return train.fit(f'retrain {name}', config.retrain, config, workdir, network, module,
                   slim_step_factory(module, network, config.retrain, mesh, configs, names),
                   source, None, stop_after_step, restore_only)


# Bisection steps for a measured latency baseline: each one times a network (about a second).
LATENCY_BISECTION_STEPS = 12


def baseline_for(network: Network, target: Mapping[str, Any],
                 measure_latency: Callable[[Mapping[str, int]], float] | None = None
                 ) -> dict[str, Any]:
  """The uniform baseline of a searched target record (width and channels): the uniform net
  whose value of the target's own metric is closest to the searched net's, within the budget.

  A latency target's baseline is measured once, by the search (``uniform_baseline`` in its
  record: another measurement could pick another width); the others are computed here.
  """
  if 'uniform_baseline' in target:
    return target['uniform_baseline']
  metric = target['metric']
  if metric == 'latency_ms' and measure_latency is None:
    raise ValueError(f'the latency target {target["name"]} has no measured uniform baseline in '
                     'its search record; search again to measure it')
  measured = {}

  def measure_once(config):  # each uniform net timed once: the bisection sees one value each
    key = tuple(sorted(config.items()))
    if key not in measured:
      measured[key] = measure_latency(config)
    return measured[key]

  width = uniform_width_for(network, metric, target[metric], target['value'], measure_once,
                            LATENCY_BISECTION_STEPS if metric == 'latency_ms' else 40)
  baseline = {'width_mult': width, 'channels': network.uniform_config(width)}
  if metric == 'latency_ms':
    baseline['latency_ms'] = measure_once(baseline['channels'])
  return baseline


def joint_order(network: Network, configs: Sequence[Mapping[str, int]]) -> list[int]:
  """Indices of ``configs`` by decreasing MACs: the first one teaches the others."""
  resource_model = resources_lib.ResourceModel(network)
  return sorted(range(len(configs)), key=lambda i: -resource_model(configs[i])['macs'])


@dataclasses.dataclass
class Trained:
  """A retrained network's variables (on the host) and how they are laid out: ``masked``, the
  supernet's max-width shapes (run the supernet at the network's config; ``export.export_slim``
  cuts them), or physically slim."""
  variables: dict[str, Any]
  masked: bool


def embedded_variables(network: Network, variables: Mapping[str, Any],
                       channels: Mapping[str, int], key: jax.Array | None = None
                       ) -> dict[str, Any]:
  """Max-width ``variables`` (a fresh initialisation) as the initial state of the slim network
  at ``channels``, embedded in the supernet's shapes: every entry the slim network lacks is
  zero, and every kernel starts with the slim layer's own initial distribution.

  The zoo's conv kernels are drawn He-normal over fan-out (``layers.CONV_INIT``): a slice of a
  N(0, 2 / fan_out_max) draw times sqrt(fan_out_max / fan_out_slim) is a N(0, 2 / fan_out_slim)
  draw; the classifier's N(0, 0.01) and BatchNorm's ones and zeros do not depend on the width.
  A plain module's initialisers are its author's, their fans unknown here: with ``key``, each of
  its kernels is drawn anew by its own initialiser at the slim shape
  (``plain_network.with_slim_kernels``);
  without, the max-width draw is kept, sliced (a fan-in initialiser then starts a narrowed
  layer with a smaller spread than its own).
  """
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  # Which entries the slim network keeps: export's slicing applied to the entries' indices.
  indices = {path: np.arange(value.size).reshape(value.shape) for path, value in flat.items()}
  kept = {path: np.asarray(k) for path, k in traverse_util.flatten_dict(export.slim_variables(
      network, traverse_util.unflatten_dict(indices), channels)).items()}
  scales, redrawn = {}, {}
  if isinstance(network, plain_network.PlainNetwork):
    if key is not None:
      redrawn = traverse_util.flatten_dict(jax.device_get(plain_network.with_slim_kernels(
          network.module, network.input_shape, export.slim_variables(network, variables,
                                                                     channels), key)))
  else:
    for layer in network.layers:
      if layer.kind in ('conv', 'depthwise') and layer.out_unit is not None:
        scales[('params', *layer.path, 'conv', 'kernel')] = np.sqrt(
            layer.out_channels / channels[layer.out_unit])
  embedded = {}
  for path, value in flat.items():
    inside = np.zeros(value.size, bool)
    inside[kept[path].ravel()] = True
    entries = value * scales.get(path, 1.0)
    if path in redrawn and path[-1] == 'kernel':
      entries = np.zeros(value.size, value.dtype)
      entries[kept[path].ravel()] = np.asarray(redrawn[path]).ravel()
    embedded[path] = np.where(inside.reshape(value.shape), entries.reshape(value.shape),
                              0).astype(value.dtype)
  return traverse_util.unflatten_dict(embedded)


def side_by_side_state(network: Network, module, key: jax.Array, make_tx: Callable,
                       channel_sets: Sequence[Mapping[str, int]]) -> steps.TrainState:
  """The initial state of ``len(channel_sets)`` networks trained side by side: each leaf with a
  leading network axis; every network drawn from the supernet's initialisation at ``key`` (the
  supernet stage's compiled program) and embedded at its channels."""
  fresh = steps.create_train_state(network, key, make_tx, module)
  variables = {'params': fresh.params, 'batch_stats': fresh.batch_stats}
  # Another stream than the supernet draw's: a plain module's kernels drawn at the slim shapes.
  slim_key = jax.random.fold_in(key, 1)
  nets = [embedded_variables(network, variables, channels, slim_key)
          for channels in channel_sets]
  stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *nets)
  return steps.TrainState.create(apply_fn=module.apply, params=stacked['params'],
                                 batch_stats=stacked['batch_stats'], tx=fresh.tx)


def train_side_by_side(config: ml_collections.ConfigDict, workdir: str, network: Network,
                       channel_sets: Sequence[Mapping[str, int]], names: Sequence[str],
                       source: input_pipeline.DataSource, stop_after_step: int | None = None,
                       restore_only: bool = False) -> list[Trained]:
  """Trains (or resumes, or restores) the networks at ``channel_sets`` side by side with the
  retrain recipe; returns each one's variables (max-width shapes, zero beyond its channels)."""
  module = network.supernet()
  mesh = parallel.make_mesh()
  space = network.channel_space()
  configs = parallel.replicate(
      {unit: np.asarray([space.validate(c)[unit] for c in channel_sets], np.int32)
       for unit in space.unit_names}, mesh)
  state = train.fit(
      f'retrain {len(names)} network{"s" if len(names) > 1 else ""} side by side', config.retrain, config, workdir, network,
      module, lambda: steps.make_side_by_side_step(module, network.num_classes, config.retrain,
                                                   names, mesh),
      source, None, stop_after_step, restore_only,
      create_state=lambda make_tx: side_by_side_state(
          network, module, jax.random.key(config.seed), make_tx, channel_sets),
      step_configs=configs)
  stacked = trained_variables(state)
  return [Trained(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked), masked=True)
          for i in range(len(names))]


SIDE_BY_SIDE_DIR = 'side_by_side'


def run_retrain(config: ml_collections.ConfigDict, workdir: str, network: Network,
                targets: Sequence[Mapping[str, Any]], source: input_pipeline.DataSource,
                restore_only: bool = False) -> dict[str, Any]:
  """Trains every searched net (and its baseline); returns {family: {target: Trained}} for
  individual mode, {family: train state} for joint mode. Finished runs are only restored."""
  cfg = config.retrain
  families = FAMILIES if cfg.uniform_baseline else FAMILIES[:1]
  channel_sets = {'autoslim': [t['channels'] for t in targets]}
  if cfg.uniform_baseline:
    channel_sets['uniform'] = [baseline_for(network, t)['channels'] for t in targets]
  states = {}
  if cfg.mode == 'individual' and cfg.side_by_side:
    unique, names, index = [], [], {}  # two nets may share a config: train it once
    for family in families:
      for target, channels in zip(targets, channel_sets[family]):
        key = tuple(sorted(channels.items()))
        if key not in index:
          index[key] = len(unique)
          unique.append(channels)
          names.append(f'{target["name"]}_{family}')
    trained = train_side_by_side(config, os.path.join(workdir, SIDE_BY_SIDE_DIR), network,
                                 unique, names, source, restore_only=restore_only)
    for family in families:
      states[family] = {
          target['name']: trained[index[tuple(sorted(channels.items()))]]
          for target, channels in zip(targets, channel_sets[family])}
  elif cfg.mode == 'individual':
    for family in families:
      states[family] = {}
      done = {}  # two targets may share a config: train it once
      for target, channels in zip(targets, channel_sets[family]):
        key = tuple(sorted(channels.items()))
        if key not in done:
          state = train_slim(config, os.path.join(workdir, target['name'], family), network,
                             channels, source, f'{target["name"]} {family}',
                             restore_only=restore_only)
          done[key] = Trained(trained_variables(state), masked=False)
        states[family][target['name']] = done[key]
  elif cfg.mode == 'joint':
    for family in families:
      order = joint_order(network, channel_sets[family])
      states[family] = train_joint(
          config, os.path.join(workdir, f'joint_{family}'), network,
          [channel_sets[family][i] for i in order], [targets[i]['name'] for i in order],
          source, f'joint {family}', restore_only=restore_only)
  else:
    raise ValueError(f'unknown retrain.mode {cfg.mode!r}; valid: individual, joint')
  return states


def trained_variables(state: steps.TrainState) -> dict[str, Any]:
  return jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
