r"""Which forward pass should BatchNorm calibration gather its statistics with?

  python runs/calibration_variants.py WORKDIR [--images=N] [--batch_size=B]

WORKDIR is a finished pipeline run (the quickstart's, say). Each retrained slim network there
carries the running averages it trained with: its own fully trained statistics. They are reset
and re-estimated from N training images in two ways:

- ``batch``: each layer normalises with the statistics of the current batch while every layer's
  input statistics are gathered (what ``evaluate.calibrate_batch_stats`` does);
- ``deployed``: each layer normalises with the population statistics estimated for the layers
  before it (the network as deployed), by fixed-point passes: the first with batch statistics,
  each next one normalising with the previous pass's estimates (3 passes).

Prints, per network and variant, the median relative distance of the re-estimated means and
variances from the trained running averages, and the test accuracy with each.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from autoslim_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import export  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import retrain  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import search  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position


def deployed_statistics(module, variables, batches, passes=3):
  """Population statistics gathered with every layer normalised by the previous pass's
  estimates (the first pass: by batch statistics)."""

  @jax.jit
  def moments(params, stats, images):
    captured = {}

    def capture(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
        x = args[0].astype(jnp.float32)
        captured[tuple(context.module.path)] = (jnp.mean(x, (0, 1, 2)),
                                                jnp.mean(jnp.square(x), (0, 1, 2)))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
      if stats is None:
        module.apply({'params': params, 'batch_stats': variables['batch_stats']}, images,
                     train=True, mutable=['batch_stats'])
      else:
        module.apply({'params': params, 'batch_stats': stats}, images, train=False)
    return captured

  stats = None
  for _ in range(passes):
    sums, count = {}, 0
    for batch in batches:
      captured = jax.device_get(moments(variables['params'], stats, batch['image']))
      for path, (mean, square) in captured.items():
        old = sums.get(path, (0.0, 0.0))
        sums[path] = (old[0] + np.asarray(mean, np.float64), old[1] + np.asarray(square, np.float64))
      count += 1
    flat = {}
    for path, (mean, square) in sums.items():
      flat[path + ('mean',)] = (mean / count).astype(np.float32)
      flat[path + ('var',)] = np.maximum(square / count - (mean / count) ** 2, 0).astype(np.float32)
    stats = flax.traverse_util.unflatten_dict(flat)
  return stats


def distance(estimate, trained):
  flat_e = flax.traverse_util.flatten_dict(estimate)
  flat_t = flax.traverse_util.flatten_dict(jax.device_get(trained))
  result = {}
  for kind in ('mean', 'var'):
    errors = [np.median(np.abs(flat_e[k] - flat_t[k]) / (np.abs(flat_t[k]) + 1e-3))
              for k in flat_t if k[-1] == kind]
    result[kind] = float(np.median(errors))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdir')
  parser.add_argument('--images', type=int, default=512)
  parser.add_argument('--batch_size', type=int, default=128)
  args = parser.parse_args()
  config = ml_collections.ConfigDict(files.read_json(os.path.join(args.workdir, 'config.json')))
  network, _ = pipeline.build_network(config)
  source = input_pipeline.create_source(config.dataset)
  mesh = parallel.make_mesh()
  batches = list(input_pipeline.calibration_batches(source, args.images, args.batch_size))

  results = files.read_json(os.path.join(args.workdir, 'results.json'))
  print('| network | variant | mean: median relative distance | var: median relative distance '
        '| test accuracy (%) |\n|---|---|---:|---:|---:|')
  searched = search.read_summary(os.path.join(args.workdir, 'search'))['targets']
  retrained = retrain.run_retrain(config, os.path.join(args.workdir, 'retrain'), network,
                                  searched, source, restore_only=True)
  for target in results['targets']:
    for family in ('autoslim', 'uniform'):
      channels = target[family]['channels']
      module = network.slim_module(channels)
      trained = retrained[family][target['name']]
      trained = (export.slim_variables(network, trained.variables, channels) if trained.masked
                 else trained.variables)
      variants = {
          'batch': evaluate.calibrate_batch_stats(evaluate.make_calibration_step(module, mesh),
                                                  parallel.replicate(trained, mesh), batches,
                                                  None, mesh),
          'deployed': deployed_statistics(module, trained, batches)}
      eval_step = evaluate.make_eval_step(module, mesh)
      for name, stats in (('trained running averages', trained['batch_stats']),
                          *variants.items()):
        accuracy = evaluate.evaluate_config(
            eval_step, {'params': trained['params'], 'batch_stats': stats},
            input_pipeline.eval_batches(source, 'test', config.retrain.eval_batch_size), None,
            mesh)['accuracy']
        d = distance(stats, trained['batch_stats']) if name in variants else {'mean': 0, 'var': 0}
        print(f'| {target["name"]} {family} | {name} | {d["mean"]:.4f} | {d["var"]:.4f} | '
              f'{100 * accuracy:.2f} |')



if __name__ == '__main__':
  main()
