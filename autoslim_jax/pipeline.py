"""The AutoSlim pipeline behind ``python -m autoslim_jax.main``.

Today it runs the stages that exist: it trains (or resumes, or restores) the supernet the
config describes, scores its max, min and random configs on the whole held-out split through one
compiled function with their MACs, params and memory, and exports the max and min networks as
physically slim models, checking that each gives the masked supernet's logits. Greedy search,
BN calibration and retraining are the next stages to land (see the README).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from autoslim_jax import defaults
from autoslim_jax import evaluate
from autoslim_jax import export
from autoslim_jax import input_pipeline
from autoslim_jax import models
from autoslim_jax import parallel
from autoslim_jax import resources as resources_lib
from autoslim_jax import train

NUM_RANDOM_CONFIGS = 8  # random configs scored after training, besides max and min


def check_data_fits(network, source) -> None:
  if tuple(source.image_shape) != network.input_shape:
    raise ValueError(f'the data set {source.name} has images of shape {source.image_shape} but '
                     f'the network takes {network.input_shape}; set config.model_kwargs '
                     f'(image_size, in_channels) or config.dataset.image_size to match')
  if source.num_classes > network.num_classes:
    raise ValueError(f'the data set {source.name} has {source.num_classes} classes but the '
                     f'network has {network.num_classes} outputs (config.model_kwargs.num_classes)')

def build_network(config: ml_collections.ConfigDict, dtype: str = 'float32'):
  """The network and its channel space from a config."""
  network = models.create_network(config.model, dtype=dtype, **config.model_kwargs.to_dict())
  if not 0 < config.min_width <= network.max_width_mult:
    raise ValueError(f'min_width {config.min_width} must be in (0, max width '
                     f'{network.max_width_mult}]')
  space = network.channel_space(config.groups, config.min_width / network.max_width_mult)
  return network, space


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Checks the config, trains (or resumes) the supernet, then scores and exports configs."""
  defaults.check_config(config)
  network, space = build_network(config)
  training_network, _ = build_network(config, config.supernet.compute_dtype)
  source = input_pipeline.create_source(config.dataset)
  check_data_fits(network, source)
  os.makedirs(workdir, exist_ok=True)
  logging.info('%s; %s', network, space)
  logging.info('data %s: %s', source.name,
               ', '.join(f'{name} {count}' for name, count in source.num_examples.items()))

  state = train.train_supernet(config, os.path.join(workdir, 'supernet'), training_network,
                               space, source)
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  key_configs = jax.random.key(config.seed + 1)
  resource_model = resources_lib.ResourceModel(network)
  supernet = network.supernet()
  mesh = parallel.make_mesh()
  eval_step = evaluate.make_batch_stats_eval_step(supernet, mesh)

  named_configs = [('max', space.max_config()), ('min', space.min_config())]
  sample = jax.jit(space.sample)
  for i, key in enumerate(jax.random.split(key_configs, NUM_RANDOM_CONFIGS)):
    named_configs.append((f'random{i}', {n: int(c) for n, c in sample(key).items()}))

  rows = []
  start = time.perf_counter()
  for name, channel_config in named_configs:
    scores = evaluate.evaluate_config(
        eval_step, variables,
        input_pipeline.eval_batches(source, 'heldout', config.supernet.eval_batch_size),
        space.as_arrays(channel_config), mesh)
    rows.append({'name': name, **resource_model(channel_config), **scores})
    logging.info('%-8s MACs %8.3fM params %7.4fM memory %7.4fM held-out accuracy %.4f loss %.4f',
                 name, rows[-1]['macs'] / 1e6, rows[-1]['params'] / 1e6,
                 rows[-1]['memory'] / 1e6, rows[-1]['accuracy'], rows[-1]['loss'])
  compilations = eval_step._cache_size()  # pylint: disable=protected-access
  logging.info('scored %d configs on all %d held-out images in %.1fs with %d compilation(s)',
               len(rows), rows[0]['count'], time.perf_counter() - start, compilations)

  exports = {}
  test_images = next(input_pipeline.eval_batches(source, 'test', 64))['image']
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
  print('held-out accuracy: the supernet with BatchNorm in batch-statistics mode, as the greedy '
        'search will score configs (the search stage is next).')
