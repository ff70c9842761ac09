"""The AutoSlim pipeline behind ``python -m autoslim_jax.main``.

Today it runs the stages that exist: it builds the supernet the config describes, profiles its
max and min networks, scores max, min and random configs on the held-out split through one
compiled function, and exports the max and min networks as physically slim models, checking
that each gives the masked supernet's logits. Supernet training, greedy search and retraining
are the next stages to land (see the README).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from autoslim_jax import evaluate
from autoslim_jax import export
from autoslim_jax import input_pipeline
from autoslim_jax import models
from autoslim_jax import resources as resources_lib

CONFIG_KEYS = ('model', 'model_kwargs', 'dataset', 'heldout_size', 'groups', 'min_width',
               'eval_batch_size', 'num_random_configs', 'seed')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses unknown or missing keys: a misspelled key must not silently fall back."""
  unknown = sorted(set(config.keys()) - set(CONFIG_KEYS))
  missing = sorted(set(CONFIG_KEYS) - set(config.keys()))
  if unknown or missing:
    raise ValueError(f'config keys: unknown {unknown}, missing {missing}; the keys are '
                     f'{list(CONFIG_KEYS)}')


def build_network(config: ml_collections.ConfigDict):
  """The network and its channel space from a config."""
  network = models.create_network(config.model, **config.model_kwargs.to_dict())
  if not 0 < config.min_width <= network.max_width_mult:
    raise ValueError(f'min_width {config.min_width} must be in (0, max width '
                     f'{network.max_width_mult}]')
  space = network.channel_space(config.groups, config.min_width / network.max_width_mult)
  return network, space


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  check_config(config)
  network, space = build_network(config)
  data = input_pipeline.load_dataset(config.dataset, config.heldout_size)
  os.makedirs(workdir, exist_ok=True)
  logging.info('%s; %s', network, space)
  logging.info('data %s: %s', config.dataset,
               ', '.join(f'{name} {len(split)}' for name, split in data.items()))

  resource_model = resources_lib.ResourceModel(network)
  key_init, key_configs = jax.random.split(jax.random.key(config.seed))
  variables = network.init(key_init)
  supernet = network.supernet()

  @jax.jit
  def score(variables, images, labels, channel_config):
    logits = evaluate.logits_with_batch_stats(supernet, variables, images, channel_config)
    return evaluate.metrics(logits, labels)

  named_configs = [('max', space.max_config()), ('min', space.min_config())]
  sample = jax.jit(space.sample)
  for i, key in enumerate(jax.random.split(key_configs, config.num_random_configs)):
    named_configs.append((f'random{i}', {n: int(c) for n, c in sample(key).items()}))

  heldout = data['heldout']
  rows = []
  start = time.perf_counter()
  for name, channel_config in named_configs:
    scores = score(variables, heldout.images[:config.eval_batch_size],
                   heldout.labels[:config.eval_batch_size], space.as_arrays(channel_config))
    rows.append({'name': name, **resource_model(channel_config),
                 **{k: float(v) for k, v in scores.items()}})
    logging.info('%-8s MACs %8.3fM params %7.4fM memory %7.4fM held-out accuracy %.3f loss %.3f',
                 name, rows[-1]['macs'] / 1e6, rows[-1]['params'] / 1e6,
                 rows[-1]['memory'] / 1e6, rows[-1]['accuracy'], rows[-1]['loss'])
  compilations = score._cache_size()  # pylint: disable=protected-access
  logging.info('scored %d configs in %.1fs with %d compilation(s)', len(rows),
               time.perf_counter() - start, compilations)

  exports = {}
  test_images = data['test'].images[:64]
  for name, channel_config in named_configs[:2]:
    module, slim_vars = export.export_slim(network, variables, channel_config)
    directory = os.path.join(workdir, 'export', name)
    export.save_slim(directory, network, config.model_kwargs.to_dict(), channel_config, slim_vars)
    slim_logits = module.apply(slim_vars, test_images, train=False)
    masked_logits = supernet.apply(variables, test_images, space.as_arrays(channel_config),
                                   train=False)
    difference = float(jnp.max(jnp.abs(slim_logits - masked_logits)))
    exports[name] = {'directory': directory, 'max_abs_logit_difference': difference,
                     'params': export.count_params(slim_vars['params'])}
    logging.info('exported %s network to %s: %d params, max |slim - masked logits| = %.2e',
                 name, directory, exports[name]['params'], difference)

  summary = {'network': repr(network), 'space': repr(space), 'configs': rows,
             'compilations': compilations, 'exports': exports}
  export.write_atomic(os.path.join(workdir, 'summary.json'),
                      json.dumps(summary, indent=1).encode())
  print_summary(rows, workdir)
  return summary


def print_summary(rows, workdir: str) -> None:
  print(f'\n{"config":8s} {"MACs (M)":>9s} {"params (M)":>10s} {"memory (M)":>10s} '
        f'{"held-out acc":>12s}')
  for row in rows:
    print(f'{row["name"]:8s} {row["macs"] / 1e6:9.3f} {row["params"] / 1e6:10.4f} '
          f'{row["memory"] / 1e6:10.4f} {row["accuracy"]:12.3f}')
  print(f'\nresults: {os.path.join(workdir, "summary.json")}; slim exports: '
        f'{os.path.join(workdir, "export")}')
  print('note: the supernet is untrained until the training stage lands (accuracy ~ chance).')
