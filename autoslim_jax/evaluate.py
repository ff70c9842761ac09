"""Scoring configs of a supernet on labelled batches."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from autoslim_jax import channels as channels_lib
from autoslim_jax import parallel


def logits_with_batch_stats(module: nn.Module, variables: Mapping, images: jax.Array,
                            config: Mapping[str, jax.Array]) -> jax.Array:
  """Logits with BatchNorm normalising by this batch's statistics.

  As in greedy slimming (design.md, section 2): the running averages are neither used nor
  updated, so no calibration is needed to compare configs on a large batch.
  """
  logits, _ = module.apply(variables, images, config, train=True, mutable=['batch_stats'])
  return logits


def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums of correct predictions, loss and counted examples, for exact split-wide averages."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {'correct': jnp.sum(correct * mask), 'loss': jnp.sum(loss * mask),
          'count': jnp.sum(mask)}


def _make_summing_step(logits_fn, module: nn.Module):
  """(variables, global batch, config) -> metrics summed over the batch.

  A global computation, jitted over arrays split on the mesh's data axis: XLA adds the
  cross-device sums, so every BatchNorm in batch-statistics mode normalises with the statistics
  of the whole global batch, whatever the number of devices (design.md, section 2).
  """

  def step(variables, batch, config):
    logits = logits_fn(module, variables, batch['image'], config)
    return masked_sums(logits, batch['label'], batch['mask'])

  return jax.jit(step)


def make_batch_stats_eval_step(module: nn.Module, mesh: Mesh | None = None):
  """(variables, batch, config) -> summed metrics; BatchNorm uses the global batch's
  statistics (the search's and the supernet's held-out evaluation)."""
  del mesh  # the batch's sharding places the computation
  return _make_summing_step(logits_with_batch_stats, module)


def evaluate_config(eval_step, variables, batches: Iterable[Mapping[str, np.ndarray]],
                    config: Mapping[str, jax.Array], mesh: Mesh) -> dict[str, float]:
  """Exact held-out (or test) accuracy and loss of one config over every batch."""
  totals = None
  parallel.settle(variables)  # e.g. a training step still running
  for batch in batches:
    sums = parallel.settle(eval_step(variables, parallel.shard_batch(batch, mesh), config))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count,
          'count': int(count)}


def logits_with_running_averages(module: nn.Module, variables: Mapping, images: jax.Array,
                                 config: Mapping[str, jax.Array] | None) -> jax.Array:
  """Logits as a deployed network computes them: BatchNorm with its (calibrated) averages."""
  return module.apply(variables, images, config, train=False)


def make_eval_step(module: nn.Module, mesh: Mesh | None = None):
  """(variables, batch, config) -> summed metrics with BatchNorm's running averages."""
  del mesh
  return _make_summing_step(logits_with_running_averages, module)


def batch_statistics(module: nn.Module, variables: Mapping, images: jax.Array,
                     config: Mapping[str, jax.Array] | None) -> dict:
  """Every BatchNorm layer's mean and (biased) variance of its input over ``images`` (the
  global batch: XLA reduces over the devices), as a batch_stats tree.

  Read off the BatchNorm inputs directly rather than from the momentum-updated running averages,
  so calibration does not depend on (or need to invert) any layer's momentum. The variance is
  the mean of squared deviations from the batch mean (two passes on the device: no cancellation).
  """
  of_module = getattr(module, 'batch_statistics', None)
  if of_module is not None:  # a slim plain network: no BatchNorm module call to intercept
    return of_module(variables, images, batch_statistics)
  captured = {}

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      x = args[0].astype(jnp.float32 if args[0].dtype != jnp.float64 else jnp.float64)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      captured[tuple(context.module.path)] = {
          'mean': mean, 'var': jnp.mean(jnp.square(x - mean), axes)}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    module.apply(variables, images, config, train=True, mutable=['batch_stats'])
  return flax.traverse_util.unflatten_dict(
      {path + (name,): value for path, stats in captured.items() for name, value in stats.items()})


def make_calibration_step(module: nn.Module, mesh: Mesh | None = None):
  """(variables, global batch, config) -> every BatchNorm input's batch mean and variance."""
  del mesh
  return jax.jit(lambda variables, batch, config: batch_statistics(module, variables,
                                                                   batch['image'], config))


def calibrate_batch_stats(calibration_step, variables: Mapping,
                          batches: Iterable[Mapping[str, np.ndarray]],
                          config: Mapping[str, jax.Array] | None, mesh: Mesh) -> dict:
  """Fresh BatchNorm statistics for ``config``: each layer input's population mean and variance
  over every calibration image (design.md, section 2).

  The sums of x and x^2 over all N images and all devices, from each global batch's mean m_b
  and variance v_b (E_b[x^2] = v_b + m_b^2), accumulated in float64 on the host: mean = E[x],
  var = E[x^2] - E[x]^2. Every batch has the same size, so these are the exact averages.

  While the statistics are gathered, each layer normalises its input with the statistics of the
  current global batch (calibration.batch_size images over all devices), as in training, not
  with the partial population statistics of earlier batches: with a batch of a few hundred
  images the two differ by the sampling error of the batch (measured in runs/calibration.md).
  """
  sums, count = {}, 0  # (layer path, 'mean' | 'square') -> float64 sum over batches
  parallel.settle(variables)
  for batch in batches:
    stats = flax.traverse_util.flatten_dict(jax.device_get(
        calibration_step(variables, parallel.shard_batch(batch, mesh), config)))
    for key, value in stats.items():
      if key[-1] == 'mean':
        mean = value.astype(np.float64)
        square = stats[key[:-1] + ('var',)].astype(np.float64) + np.square(mean)
        for name, moment in (('mean', mean), ('square', square)):
          sums[key[:-1], name] = sums.get((key[:-1], name), 0.0) + moment
    count += 1
  if not count:
    raise ValueError('BatchNorm calibration got no batches')
  like = flax.traverse_util.flatten_dict(jax.device_get(variables['batch_stats']))
  population = {}
  for (layer, name), total in sums.items():
    if name == 'mean':
      mean = total / count
      variance = np.maximum(sums[layer, 'square'] / count - np.square(mean), 0.0)
      population[layer + ('mean',)] = mean.astype(like[layer + ('mean',)].dtype)
      population[layer + ('var',)] = variance.astype(like[layer + ('var',)].dtype)
  return flax.traverse_util.unflatten_dict(population)


def normalized(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 images as the input pipeline normalises them (``input_pipeline.normalize``)."""
  return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
      std, jnp.float32)


def make_candidate_scorer(module: nn.Module, mesh: Mesh | None = None,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
  """(variables, global batch, chunk of configs) -> per-candidate sums over the batch.

  The configs are a dict unit -> int array (chunk,): the network is vmapped over them, so a chunk
  costs one call; BatchNorm normalises each candidate by the statistics of the whole global
  batch (a global computation, as ``make_batch_stats_eval_step``). With ``mean`` and ``std`` the
  batches hold stored (uint8) images, normalised here on the device.
  """
  del mesh

  def score(variables, batch, configs):
    images = batch['image'] if mean is None else normalized(batch['image'], mean, std)

    def one_candidate(config):
      logits = logits_with_batch_stats(module, variables, images, config)
      return masked_sums(logits, batch['label'], batch['mask'])
    return jax.vmap(one_candidate)(configs)

  return jax.jit(score)


def score_configs(scorer, variables, batches: Iterable[Mapping[str, np.ndarray]],
                  configs: Sequence[Mapping[str, int]], space: channels_lib.ChannelSpace,
                  chunk_size: int, mesh: Mesh) -> list[dict[str, float]]:
  """Held-out accuracy, loss and correct count of every config, ``chunk_size`` at a time.

  Every call scores exactly ``chunk_size`` configs (the last chunk padded with repeats of the
  last config), so one compiled scorer serves any number of configs; the search picks a chunk
  balanced over a step's calls (``search.balanced_chunk_size``). Each batch is moved to the
  devices once and scored by every chunk.
  """
  matrix = space.matrix(configs)
  padding = (-len(configs)) % chunk_size
  matrix = np.concatenate([matrix, np.repeat(matrix[-1:], padding, axis=0)])
  chunks = [parallel.replicate(
      {name: jnp.asarray(part[:, i], jnp.int32) for i, name in enumerate(space.unit_names)}, mesh)
            for part in np.split(matrix, len(matrix) // chunk_size)]
  totals = [None] * len(chunks)
  parallel.settle(variables)
  for batch in batches:
    sharded = parallel.shard_batch(batch, mesh)
    for i, chunk in enumerate(chunks):
      sums = parallel.settle(scorer(variables, sharded, chunk))
      totals[i] = sums if totals[i] is None else jax.tree_util.tree_map(jnp.add, totals[i], sums)
  totals = jax.device_get(totals)  # replicated: (chunk,) each
  stacked = {key: np.concatenate([t[key] for t in totals])[:len(configs)] for key in totals[0]}
  return [{'accuracy': float(correct) / float(count), 'loss': float(loss) / float(count),
           'correct': int(round(float(correct))), 'count': int(round(float(count)))}
          for correct, loss, count in zip(stacked['correct'], stacked['loss'], stacked['count'])]
