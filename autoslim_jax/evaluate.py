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
from jax.sharding import PartitionSpec as P

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


def _make_summing_step(logits_fn, module: nn.Module, mesh: Mesh):
  """(variables, batch, config) -> metrics summed over the devices' shards of the batch."""

  def per_device(variables, batch, config):
    logits = logits_fn(module, variables, batch['image'], config)
    sums = masked_sums(logits, batch['label'], batch['mask'])
    return jax.tree_util.tree_map(lambda x: jax.lax.psum(x, parallel.DATA_AXIS), sums)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                               out_specs=P()))


def make_batch_stats_eval_step(module: nn.Module, mesh: Mesh):
  """(variables, batch, config) -> summed metrics; BatchNorm uses each device's batch."""
  return _make_summing_step(logits_with_batch_stats, module, mesh)


def evaluate_config(eval_step, variables, batches: Iterable[Mapping[str, np.ndarray]],
                    config: Mapping[str, jax.Array], mesh: Mesh) -> dict[str, float]:
  """Exact held-out (or test) accuracy and loss of one config over every batch."""
  totals = None
  for batch in batches:
    sums = eval_step(variables, parallel.shard_batch(batch, mesh), config)
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count,
          'count': int(count)}


def logits_with_running_averages(module: nn.Module, variables: Mapping, images: jax.Array,
                                 config: Mapping[str, jax.Array] | None) -> jax.Array:
  """Logits as a deployed network computes them: BatchNorm with its (calibrated) averages."""
  return module.apply(variables, images, config, train=False)


def make_eval_step(module: nn.Module, mesh: Mesh):
  """(variables, batch, config) -> summed metrics with BatchNorm's running averages."""
  return _make_summing_step(logits_with_running_averages, module, mesh)


def batch_statistics(module: nn.Module, variables: Mapping, images: jax.Array,
                     config: Mapping[str, jax.Array] | None) -> dict:
  """Every BatchNorm layer's mean and (biased) variance over ``images``, as a batch_stats tree.

  Read off the BatchNorm inputs directly rather than from the momentum-updated running averages,
  so calibration does not depend on (or need to invert) any layer's momentum.
  """
  captured = {}

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      x = args[0].astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      captured[tuple(context.module.path)] = {
          'mean': mean, 'var': jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    module.apply(variables, images, config, train=True, mutable=['batch_stats'])
  return flax.traverse_util.unflatten_dict(
      {path + (name,): value for path, stats in captured.items() for name, value in stats.items()})


def make_calibration_step(module: nn.Module, mesh: Mesh):
  """(variables, batch, config) -> batch statistics averaged over the devices' shards."""

  def per_device(variables, batch, config):
    stats = batch_statistics(module, variables, batch['image'], config)
    return jax.lax.pmean(stats, parallel.DATA_AXIS)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                               out_specs=P()))


def calibrate_batch_stats(calibration_step, variables: Mapping,
                          batches: Iterable[Mapping[str, np.ndarray]],
                          config: Mapping[str, jax.Array] | None, mesh: Mesh) -> dict:
  """Fresh BatchNorm statistics for ``config``: the exact average of every batch's statistics.

  design.md, section 2: reset, then a cumulative (not momentum) average over N training images.
  Every batch (and every device's shard) has the same size, so the plain mean is exact.
  """
  total, count = None, 0
  for batch in batches:
    stats = calibration_step(variables, parallel.shard_batch(batch, mesh), config)
    total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
    count += 1
  if total is None:
    raise ValueError('BatchNorm calibration got no batches')
  return jax.device_get(jax.tree_util.tree_map(lambda x: x / count, total))


def make_candidate_scorer(module: nn.Module, mesh: Mesh):
  """(variables, sharded batch, chunk of configs) -> per-candidate sums over the batch.

  The configs are a dict unit -> int array (chunk,): the network is vmapped over them, so a chunk
  costs one call; BatchNorm normalises each candidate by its own batch statistics.
  """

  def per_device(variables, batch, configs):
    def one_candidate(config):
      logits = logits_with_batch_stats(module, variables, batch['image'], config)
      return masked_sums(logits, batch['label'], batch['mask'])

    sums = jax.vmap(one_candidate)(configs)
    return jax.tree_util.tree_map(lambda x: x[None], sums)

  # Per-device sums, added up by the caller: no collective inside the vmapped program (on
  # XLA:CPU with many fake devices an all-reduce there can starve the shared thread pool).
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                               out_specs=P(parallel.DATA_AXIS)))


def score_configs(scorer, variables, batches: Iterable[Mapping[str, np.ndarray]],
                  configs: Sequence[Mapping[str, int]], space: channels_lib.ChannelSpace,
                  chunk_size: int, mesh: Mesh) -> list[dict[str, float]]:
  """Held-out accuracy, loss and correct count of every config, ``chunk_size`` at a time.

  Each batch is moved to the devices once and scored by every chunk.
  """
  matrix = space.matrix(configs)
  padding = (-len(configs)) % chunk_size
  matrix = np.concatenate([matrix, np.repeat(matrix[-1:], padding, axis=0)])
  chunks = [parallel.replicate(
      {name: jnp.asarray(part[:, i], jnp.int32) for i, name in enumerate(space.unit_names)}, mesh)
            for part in np.split(matrix, len(matrix) // chunk_size)]
  totals = [None] * len(chunks)
  for batch in batches:
    sharded = parallel.shard_batch(batch, mesh)
    for i, chunk in enumerate(chunks):
      sums = scorer(variables, sharded, chunk)
      totals[i] = sums if totals[i] is None else jax.tree_util.tree_map(jnp.add, totals[i], sums)
  totals = parallel.to_host(totals)  # per device: (devices, chunk) each
  stacked = {key: np.concatenate([np.sum(t[key], 0) for t in totals])[:len(configs)]
             for key in totals[0]}
  return [{'accuracy': float(correct) / float(count), 'loss': float(loss) / float(count),
           'correct': int(round(float(correct))), 'count': int(round(float(count)))}
          for correct, loss, count in zip(stacked['correct'], stacked['loss'], stacked['count'])]
