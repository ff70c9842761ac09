"""Scoring a config of a supernet: accuracy and loss on a batch of labelled images."""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def logits_with_batch_stats(module: nn.Module, variables: Mapping, images: jax.Array,
                            config: Mapping[str, jax.Array]) -> jax.Array:
  """Logits with BatchNorm normalising by this batch's statistics.

  As in greedy slimming (design.md, section 2): the running averages are neither used nor
  updated, so no calibration is needed to compare configs on a large batch.
  """
  logits, _ = module.apply(variables, images, config, train=True, mutable=['batch_stats'])
  return logits


def metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Top-1 accuracy and mean cross-entropy."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = (jnp.argmax(logits, -1) == labels).mean()
  return {'accuracy': accuracy, 'loss': loss}
