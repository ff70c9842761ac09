"""Scoring configs of a supernet on labelled batches."""

from __future__ import annotations

from typing import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

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


def make_batch_stats_eval_step(module: nn.Module, mesh: Mesh):
  """(variables, batch, config) -> summed metrics; BatchNorm uses each device's batch."""

  def per_device(variables, batch, config):
    logits = logits_with_batch_stats(module, variables, batch['image'], config)
    sums = masked_sums(logits, batch['label'], batch['mask'])
    return jax.tree_util.tree_map(lambda x: jax.lax.psum(x, parallel.DATA_AXIS), sums)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                               out_specs=P()))


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
