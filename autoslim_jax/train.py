"""Supernet training: the sandwich rule with inplace distillation, data parallel, resumable.

Every step, every device draws its own sub-networks (design.md, section 2): the max, the min and
``num_sandwich - 2`` random configs (each unit's width drawn independently), from a key folded
with the step and the device index, so a restarted run draws the same ones. The max network
learns from the labels (with label smoothing), the others from the max network's
``stop_gradient`` soft predictions; the losses are summed, the gradients averaged over devices,
and one optimizer update applied.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from autoslim_jax import channels as channels_lib
from autoslim_jax import evaluate
from autoslim_jax import input_pipeline
from autoslim_jax import parallel
from autoslim_jax.models.base import Network


class TrainState(train_state.TrainState):
  batch_stats: Any = None


class NonFiniteLossError(FloatingPointError):
  pass


def weight_decay_mask(network: Network, params) -> Any:
  """True for conv and dense kernels, except depthwise ones; False for BatchNorm and biases."""
  kinds = {layer.path: layer.kind for layer in network.layers}
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  return traverse_util.unflatten_dict({
      key: key[-1] == 'kernel' and kinds.get(tuple(key[:-2])) != 'depthwise'
      for key in flat})


STEP_DECAY_AT = (0.3, 0.6, 0.9)  # fractions of the run where the 'step' schedule divides by 10


def learning_rate_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """Peak lr scaled with the batch size; optional linear warm-up; then linear or cosine decay to
  0, or ``step``: x0.1 at 30%, 60% and 90% of the run (ResNet's epochs 30, 60, 90 of 100)."""
  peak = cfg.base_learning_rate * cfg.batch_size / cfg.base_batch_size
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  decay_steps = max(1, total_steps - warmup)
  if cfg.schedule == 'linear':
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif cfg.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif cfg.schedule == 'step':
    boundaries = {max(1, int(round(f * total_steps)) - warmup): 0.1 for f in STEP_DECAY_AT}
    decay = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise ValueError(f'unknown schedule {cfg.schedule!r}; valid: linear, cosine, step')
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def create_optimizer(cfg: ml_collections.ConfigDict, network: Network, params,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  mask = weight_decay_mask(network, params)
  if cfg.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                       optax.sgd(schedule, momentum=cfg.momentum, nesterov=True))
  if cfg.optimizer == 'adamw':
    return optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=mask)
  raise ValueError(f'unknown optimizer {cfg.optimizer!r}; valid: sgd, adamw')


def create_train_state(network: Network, key: jax.Array, make_tx: Callable,
                       module: nn.Module | None = None) -> TrainState:
  """A fresh state of ``module`` (default: the supernet; a slim module for retraining)."""
  module = network.supernet() if module is None else module
  # Jitted: run eagerly, init compiles every small op on its own (~15 s for a MobileNet on CPU).
  init = jax.jit(functools.partial(module.init, train=False))
  variables = init(key, jnp.zeros((1,) + network.input_shape, jnp.float32))
  tx = make_tx(variables['params'])
  return TrainState.create(apply_fn=module.apply, params=variables['params'],
                           batch_stats=variables['batch_stats'], tx=tx)


def sandwich_configs(space: channels_lib.ChannelSpace, key: jax.Array, num_sandwich: int
                     ) -> list[dict[str, jax.Array]]:
  """Max, min and ``num_sandwich - 2`` random configs."""
  configs = [space.as_arrays(space.max_config()), space.as_arrays(space.min_config())]
  return configs + [space.sample(k) for k in jax.random.split(key, num_sandwich - 2)]


def sandwich_member_names(num_sandwich: int) -> list[str]:
  return ['max', 'min'] + [f'random{i}' for i in range(num_sandwich - 2)]


def device_key(seed: int, step: jax.Array, device: jax.Array) -> jax.Array:
  """The key of one device at one step: the same (seed, step, device), the same draws."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), device)


def sandwich_loss(params, batch_stats, module: nn.Module, images, labels,
                  configs: Sequence[Mapping[str, jax.Array] | None], num_classes: int,
                  label_smoothing: float):
  """Sum of the sandwich losses; the first config (the max network) learns from the labels.

  Returns (total, (per-member losses, per-member logits, batch_stats after the first pass)).
  The running statistics follow the first network; other configs get theirs by calibration.
  With ``configs == [None]`` this is plain training of a physically slim network.
  """
  variables = {'params': params, 'batch_stats': batch_stats}
  first_logits, state = module.apply(variables, images, configs[0], train=True,
                                     mutable=['batch_stats'])
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  losses = [optax.softmax_cross_entropy(first_logits, targets).mean()]
  all_logits = [first_logits]
  teacher = jax.lax.stop_gradient(jax.nn.softmax(first_logits))  # inplace distillation
  for config in configs[1:]:
    logits, _ = module.apply(variables, images, config, train=True, mutable=['batch_stats'])
    losses.append(optax.softmax_cross_entropy(logits, teacher).mean())
    all_logits.append(logits)
  return sum(losses), (jnp.stack(losses), all_logits, state['batch_stats'])


def make_distillation_step(module: nn.Module, num_classes: int, cfg: ml_collections.ConfigDict,
                           draw_configs: Callable[[jax.Array, jax.Array], list],
                           member_names: Sequence[str], mesh: Mesh, schedule: optax.Schedule):
  """The jitted data-parallel step: (state, sharded batch) -> (state, metrics).

  ``draw_configs(step, device)`` gives the configs one device trains at one step, the teacher
  first; ``member_names`` name them in the metrics (``loss_<name>``, ``<name>_accuracy`` of the
  first two).
  """
  num_devices = mesh.size

  def per_device(state: TrainState, batch):
    device = jax.lax.axis_index(parallel.DATA_AXIS)
    configs = draw_configs(state.step, device)
    loss_fn = functools.partial(
        sandwich_loss, module=module, images=batch['image'], labels=batch['label'],
        configs=configs, num_classes=num_classes, label_smoothing=cfg.label_smoothing)
    (total, (losses, logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.batch_stats)
    # Inside shard_map the gradient of the replicated params already comes back summed over
    # devices (the transpose of the implicit broadcast is a psum): divide once for the mean.
    grads = jax.tree_util.tree_map(lambda g: g / num_devices, grads)
    mean = functools.partial(jax.lax.pmean, axis_name=parallel.DATA_AXIS)
    batch_stats = mean(batch_stats)
    total = mean(total)
    # One reduction (a NaN or inf anywhere makes the norm non-finite): checking every leaf on
    # its own doubled the step's compile time.
    finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # A non-finite step leaves the state as it was: no bad state can reach a checkpoint.
    new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), updated,
                                       state)
    metrics = {'loss': total, 'finite': finite.astype(jnp.float32),
               'learning_rate': schedule(state.step)}
    for name, member_logits in list(zip(member_names, logits))[:2]:
      metrics[f'{name}_accuracy'] = mean(
          jnp.mean(jnp.argmax(member_logits, -1) == batch['label']))
    losses = mean(losses)
    metrics.update({f'loss_{name}': losses[i] for i, name in enumerate(member_names)})
    return new_state, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def make_train_step(network: Network, space: channels_lib.ChannelSpace,
                    cfg: ml_collections.ConfigDict, seed: int, mesh: Mesh,
                    schedule: optax.Schedule):
  """The supernet's sandwich step; every device draws its own random sub-networks."""
  draw = lambda step, device: sandwich_configs(space, device_key(seed, step, device),
                                               cfg.num_sandwich)
  return make_distillation_step(network.supernet(), network.num_classes, cfg, draw,
                                sandwich_member_names(cfg.num_sandwich), mesh, schedule)


def _host_copy(x):
  if isinstance(x, jax.Array) and x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return x


class Checkpoints:
  """Orbax checkpoints of the train state under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState) -> None:
    # Saved from host copies of the (replicated) arrays: orbax writes numpy arrays 6.6x faster
    # than device arrays it must first slice per replica (bench/bench_checkpoint.py: 0.26 s
    # instead of 1.75 s on 8 CPU devices). Restoring gives device arrays placed as the target's.
    host_state = jax.tree_util.tree_map(_host_copy, flax.serialization.to_state_dict(state))
    self.manager.save(int(state.step), args=ocp.args.StandardSave(host_state))

  def restore(self, state: TrainState) -> TrainState:
    """The latest readable checkpoint. A damaged one (a crash mid-write that orbax did not
    catch, a truncated copy, a bad disk) is moved to ``damaged_checkpoints/`` beside the
    checkpoints, with a warning, and the one before it is used."""
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                    flax.serialization.to_state_dict(state))
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # pylint: disable=broad-except  # orbax and tensorstore raise many
        if step == steps[-1]:
          raise ValueError(f'no readable checkpoint in {self.directory}: the one of step {step} '
                           f'fails to load ({type(e).__name__}: {e}); move the folder away to '
                           'start again') from None
        aside = os.path.join(os.path.dirname(self.directory), 'damaged_checkpoints',
                             f'{step}_{int(time.time())}')
        logging.warning('the checkpoint of step %d in %s is damaged (%s: %.300s); moved to %s, '
                        'resuming from an earlier one', step, self.directory,
                        type(e).__name__, e, aside)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(os.path.join(self.directory, str(step)), aside)
        self.manager.reload()
        continue
      return flax.serialization.from_state_dict(state, restored)
    raise ValueError(f'no checkpoint in {self.directory}')

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def train_supernet(config: ml_collections.ConfigDict, workdir: str, network: Network,
                   space: channels_lib.ChannelSpace, source: input_pipeline.DataSource,
                   stop_after_step: int | None = None, restore_only: bool = False
                   ) -> TrainState:
  """Trains (or resumes, or just restores a finished) supernet in ``workdir``.

  ``stop_after_step`` ends the run early after checkpointing that step, as a preemption would
  (for time-sliced jobs and the resume tests); the next call resumes from it.
  """
  cfg = config.supernet
  parallel.check_batch_size(cfg.eval_batch_size, 'supernet.eval_batch_size')
  mesh = parallel.make_mesh()
  eval_step = evaluate.make_batch_stats_eval_step(network.supernet(), mesh)

  def evaluate_max_and_min(state: TrainState) -> dict[str, float]:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    scalars = {}
    for name, chosen in (('max', space.max_config()), ('min', space.min_config())):
      result = evaluate.evaluate_config(
          eval_step, variables,
          input_pipeline.eval_batches(source, 'heldout', cfg.eval_batch_size),
          space.as_arrays(chosen), mesh)
      scalars[f'heldout_accuracy_{name}'] = result['accuracy']
      scalars[f'heldout_loss_{name}'] = result['loss']
    return scalars

  return fit('supernet', cfg, config, workdir, network, network.supernet(),
             lambda schedule: make_train_step(network, space, cfg, config.seed, mesh, schedule),
             source, evaluate_max_and_min, stop_after_step, restore_only)


def fit(name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
        workdir: str, network: Network, module: nn.Module,
        make_step: Callable[[optax.Schedule], Callable], source: input_pipeline.DataSource,
        evaluate_fn: Callable[[TrainState], dict[str, float]] | None = None,
        stop_after_step: int | None = None, restore_only: bool = False) -> TrainState:
  """The training loop every stage shares: resume, step, log, evaluate, checkpoint.

  ``cfg`` is the stage's config section (batch size, epochs, optimizer, logging periods);
  ``make_step(schedule)`` builds the jitted step; ``evaluate_fn(state)`` returns scalars to log
  every ``cfg.eval_every_steps`` and at the end. A finished run is only restored;
  ``restore_only`` refuses to train (a later stage asking for an earlier stage's result).
  """
  parallel.check_batch_size(cfg.batch_size, f'{name}: batch_size')
  mesh = parallel.make_mesh()
  steps_per_epoch = input_pipeline.steps_per_epoch(source, cfg.batch_size)
  total_steps = max(1, int(round(cfg.num_epochs * steps_per_epoch)))
  schedule = learning_rate_schedule(cfg, steps_per_epoch, total_steps)
  state = create_train_state(
      network, jax.random.key(config.seed),
      lambda params: create_optimizer(cfg, network, params, schedule), module)
  state = parallel.replicate(state, mesh)
  checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints'), cfg.checkpoints_to_keep)
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore(state)
    logging.info('%s: resumed from the checkpoint of step %d', name, int(state.step))
  start_step = int(state.step)
  if start_step >= total_steps:
    logging.info('%s: training complete (%d steps)', name, total_steps)
    checkpoints.close()
    return state
  if restore_only:
    checkpoints.close()
    raise ValueError(f'{name}: training is not complete in {workdir} (step {start_step} of '
                     f'{total_steps}); run its stage first (config.stages)')

  logging.info('%s: %d steps (%.2f epochs of %d steps, batch %d on %d devices), from step '
               '%d', name, total_steps, cfg.num_epochs, steps_per_epoch, cfg.batch_size,
               jax.device_count(), start_step)
  train_step = make_step(schedule)
  batches = input_pipeline.train_batches(
      source, cfg.batch_size, config.seed, start_step, config.dataset.augmentation,
      config.dataset.shuffle_buffer, config.dataset.cache)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)

  pending, last_log_time, last_log_step = [], time.perf_counter(), start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, parallel.shard_batch(next(batches), mesh))
      pending.append(metrics)
      is_last = step == total_steps
      if step % cfg.log_every_steps == 0 or is_last:
        history = jax.device_get(pending)
        bad = [step - len(history) + 1 + i for i, m in enumerate(history) if not m['finite']]
        if bad:
          first = history[bad[0] - (step - len(history) + 1)]
          members = [k[len('loss_'):] for k, v in first.items()
                     if k.startswith('loss_') and not np.isfinite(v)]
          where = (f'the loss of sub-network(s) {", ".join(members)}' if members else
                   'the gradient (every sub-network\'s loss was finite)')
          raise NonFiniteLossError(
              f'{name}: non-finite {where} at step {bad[0]} (steps {step - len(history) + 1}-'
              f'{step} were checked at this log); those updates were not applied and the last '
              f'good checkpoint (step {checkpoints.latest_step()}) is kept. Lower the learning '
              f'rate or use float32.')
        seconds = time.perf_counter() - last_log_time
        steps_done = step - last_log_step
        scalars = {k: float(np.mean([m[k] for m in history])) for k in history[0]
                   if k != 'finite'}
        scalars['images_per_second'] = steps_done * cfg.batch_size / seconds
        scalars['eta_minutes'] = (total_steps - step) * seconds / steps_done / 60
        scalars['epoch'] = step / steps_per_epoch
        writer.write_scalars(step, scalars)
        pending, last_log_time, last_log_step = [], time.perf_counter(), step
      if evaluate_fn is not None and (
          (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or is_last):
        writer.write_scalars(step, evaluate_fn(state))
      if step % cfg.checkpoint_every_steps == 0 or is_last or step == stop_after_step:
        checkpoints.save(state)
      if step == stop_after_step:
        break
  finally:
    writer.flush()
    checkpoints.close()
  return state
