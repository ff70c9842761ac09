"""Retraining the searched configs from scratch, and the uniform baseline at the same budget.

``individual`` mode trains every searched config as a physically slim network (plain layers, no
masks) with the ``retrain`` recipe, and beside it the uniform width-multiplier network whose value
of the target's metric (MACs, params, memory or measured latency) is closest to the searched
net's without exceeding the target's budget (the width found by bisection), so every target has
a baseline trained the same way. ``joint`` mode trains one slimmable network over the
searched configs together (the largest learns from the labels, the others by inplace
distillation), and one over the uniform configs as its baseline.

Every run lives in its own folder under ``workdir`` and resumes from its checkpoints.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections

from autoslim_jax import input_pipeline
from autoslim_jax import parallel
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
  if metric_of(low) > value:
    raise ValueError(f'no uniform {network.name} has {metric} at most {value:g} (the narrowest '
                     f'has {metric_of(low):g})')
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
  width = uniform_width_for(network, metric, target[metric], target['value'], measure_latency,
                            LATENCY_BISECTION_STEPS if metric == 'latency_ms' else 40)
  return {'width_mult': width, 'channels': network.uniform_config(width)}


def joint_order(network: Network, configs: Sequence[Mapping[str, int]]) -> list[int]:
  """Indices of ``configs`` by decreasing MACs: the first one teaches the others."""
  resource_model = resources_lib.ResourceModel(network)
  return sorted(range(len(configs)), key=lambda i: -resource_model(configs[i])['macs'])


def run_retrain(config: ml_collections.ConfigDict, workdir: str, network: Network,
                targets: Sequence[Mapping[str, Any]], source: input_pipeline.DataSource,
                restore_only: bool = False) -> dict[str, Any]:
  """Trains every searched net (and its baseline); returns {family: {target: train state}} for
  individual mode, {family: train state} for joint mode. Finished runs are only restored."""
  cfg = config.retrain
  families = FAMILIES if cfg.uniform_baseline else FAMILIES[:1]
  channel_sets = {'autoslim': [t['channels'] for t in targets]}
  if cfg.uniform_baseline:
    channel_sets['uniform'] = [baseline_for(network, t)['channels'] for t in targets]
  states = {}
  if cfg.mode == 'individual':
    for family in families:
      states[family] = {}
      done = {}  # two targets may share a config: train it once
      for target, channels in zip(targets, channel_sets[family]):
        key = tuple(sorted(channels.items()))
        if key not in done:
          done[key] = train_slim(config, os.path.join(workdir, target['name'], family), network,
                                 channels, source, f'{target["name"]} {family}',
                                 restore_only=restore_only)
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
