"""Retraining the searched configs from scratch, and the uniform baseline of the same MACs.

``individual`` mode trains every searched config as a physically slim network (plain layers, no
masks) with the ``retrain`` recipe, and beside it the uniform width-multiplier network whose MACs
are closest to it without exceeding the target's budget (the width found by bisection), so every
target has a baseline trained the same way. ``joint`` mode trains one slimmable network over the
searched configs together (the largest learns from the labels, the others by inplace
distillation), and one over the uniform configs as its baseline.

Every run lives in its own folder under ``workdir`` and resumes from its checkpoints.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from autoslim_jax import input_pipeline
from autoslim_jax import parallel
from autoslim_jax import resources as resources_lib
from autoslim_jax import steps
from autoslim_jax import train
from autoslim_jax.models.base import Network

FAMILIES = ('autoslim', 'uniform')


def uniform_width_for_macs(network: Network, macs: float, budget: float | None = None,
                           iterations: int = 40) -> float:
  """The width multiplier whose uniform network's MACs are closest to ``macs``, never above
  ``budget`` (default: ``macs``).

  MACs grow with the width in steps (channels are rounded to multiples of 8): bisection finds
  the widest width at or under ``macs`` and the narrowest above it; the latter wins only if it
  is closer and still within the budget.
  """
  budget = macs if budget is None else budget
  resource_model = resources_lib.ResourceModel(network)
  macs_of = lambda width: resource_model(network.uniform_config(width))['macs']
  low, high = 1e-3, network.max_width_mult
  if macs_of(low) > macs:
    raise ValueError(f'no uniform {network.name} has at most {macs:g} MACs (the narrowest has '
                     f'{macs_of(low):g})')
  if macs_of(high) <= macs:
    return high
  for _ in range(iterations):
    middle = (low + high) / 2
    low, high = (middle, high) if macs_of(middle) <= macs else (low, middle)
  best = high if macs_of(high) <= budget and macs_of(high) - macs < macs - macs_of(low) else low
  readable = round(best, 4)  # a width a person can type, when it builds the same network
  return readable if macs_of(readable) == macs_of(best) else best


def slim_step_factory(module, network: Network, cfg: ml_collections.ConfigDict, mesh,
                      configs: Sequence[Mapping[str, int]] | None, names: Sequence[str]):
  """``make_step(schedule)`` for ``train.fit``: a plain slim network (``configs`` None) or a
  slimmable one over fixed ``configs`` (largest first: it learns from the labels)."""
  if configs is None:
    draw = lambda step, device: [None]
  else:
    space = network.channel_space()
    arrays = [space.as_arrays(c) for c in configs]
    draw = lambda step, device: arrays
  return lambda schedule: steps.make_distillation_step(module, network.num_classes, cfg, draw,
                                                       names, mesh, schedule)


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


def baseline_for(network: Network, target: Mapping[str, Any]) -> dict[str, Any]:
  """The uniform baseline of a searched target record: width and channels."""
  budget = target['value'] if target['metric'] == 'macs' else target['macs']
  width = uniform_width_for_macs(network, target['macs'], budget)
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
