"""The jitted training steps: the supernet's sandwich step with inplace distillation, the plain
step of a slim network, and their optimizer and schedule.

Every step, every device draws its own sub-networks (design.md, section 2): the max, the min and
``num_sandwich - 2`` random configs (each unit's width drawn independently), from a key folded
with the step and the device index, so a restarted run draws the same ones. The max network
learns from the labels (with label smoothing), the others from the max network's
``stop_gradient`` soft predictions; the losses are summed, the gradients averaged over devices,
and one optimizer update applied.

Only jax, flax, optax and numpy: the benchmarks import this module on accelerator images that
lack TensorFlow, ml-collections and clu. ``cfg`` is any object with the stage's fields (an
``ml_collections.ConfigDict`` section in the package).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from autoslim_jax import channels as channels_lib
from autoslim_jax import parallel
from autoslim_jax.models.base import Network

class TrainState(train_state.TrainState):
  batch_stats: Any = None


def weight_decay_mask(network: Network, params) -> Any:
  """True for conv and dense kernels, except depthwise ones; False for BatchNorm and biases."""
  kinds = {layer.path: layer.kind for layer in network.layers}
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  # A layer's kernel is at (layer path, 'conv', 'kernel') for a SlimConv, at (layer path,
  # 'kernel') for a plain module's layer (plain_network.PlainNetwork).
  return traverse_util.unflatten_dict({
      key: key[-1] == 'kernel' and 'depthwise' not in (kinds.get(key[:-2]), kinds.get(key[:-1]))
      for key in flat})


STEP_DECAY_AT = (0.3, 0.6, 0.9)  # fractions of the run where the 'step' schedule divides by 10


def learning_rate_schedule(cfg: Any, steps_per_epoch: int,
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


def create_optimizer(cfg: Any, network: Network, params) -> optax.GradientTransformation:
  """The stage's optimizer at a learning rate of 1: the step scales its updates by the learning
  rate it is given (``step_inputs``), so the schedule is data, not part of the compiled program
  (one executable for every schedule, stage and seed). Both optimizers apply the learning rate
  last, so this is the same update as optax's with the schedule inside."""
  mask = weight_decay_mask(network, params)
  if cfg.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                       optax.sgd(UNIT_LEARNING_RATE, momentum=cfg.momentum, nesterov=True))
  if cfg.optimizer == 'adamw':
    return optax.adamw(UNIT_LEARNING_RATE, weight_decay=cfg.weight_decay, mask=mask)
  raise ValueError(f'unknown optimizer {cfg.optimizer!r}; valid: sgd, adamw')


def UNIT_LEARNING_RATE(count):  # pylint: disable=invalid-name
  """A schedule of 1 (not the constant 1.0: a schedule keeps optax's step count in the optimizer
  state, as the checkpoints written before the learning rate became an input hold it)."""
  del count
  return 1.0


def schedule_values(schedule: optax.Schedule, total_steps: int) -> np.ndarray:
  """The learning rate of every update 0 .. total_steps - 1, in one host array (float32)."""
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(total_steps)), np.float32)


def step_inputs(learning_rate: float, seed: int) -> dict[str, np.ndarray]:
  """The values a training step takes besides its state and batch: inputs, not constants, so
  runs of other seeds and schedules share the compiled step."""
  return {'learning_rate': np.float32(learning_rate), 'seed': np.uint32(seed)}


def apply_scaled_gradients(state: 'TrainState', grads, learning_rate: jax.Array,
                           **changes) -> 'TrainState':
  """``state.apply_gradients`` with the optimizer's updates scaled by ``learning_rate``."""
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  updates = jax.tree_util.tree_map(lambda u: u * learning_rate.astype(u.dtype), updates)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, **changes)


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


def device_key(seed: int | jax.Array, step: jax.Array, device: jax.Array) -> jax.Array:
  """The key of one device at one step: the same (seed, step, device), the same draws."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), device)


def sandwich_loss(params, batch_stats, module: nn.Module, images, labels,
                  configs: Sequence[Mapping[str, jax.Array] | None], num_classes: int,
                  label_smoothing: float, fused: bool = True, inplace_distillation: bool = True):
  """Sum of the sandwich losses; the first config (the max network) learns from the labels,
  the others from its predictions (``inplace_distillation``) or from the labels too.

  Returns (total, (per-member losses, per-member logits, batch_stats after the first pass)).
  The running statistics follow the first network; other configs get theirs by calibration.
  With ``configs == [None]`` this is plain training of a physically slim network.

  ``fused`` runs all members in one pass, vmapped over their configs (the shared weights are
  not batched, so XLA folds the members into the batch of every conv): one network to compile
  instead of one per member, and larger matrix products. ``fused=False`` applies the members
  one after another (the same sums; ``supernet.fused_sandwich``: on a 2-core CPU it steps
  faster but compiles slower, bench/results.md).
  """
  variables = {'params': params, 'batch_stats': batch_stats}
  apply = lambda config: module.apply(variables, images, config, train=True,
                                      mutable=['batch_stats'])
  if fused and len(configs) > 1:
    stacked = jax.tree_util.tree_map(lambda *values: jnp.stack(values), *configs)
    logits, state = jax.vmap(apply)(stacked)
    all_logits = list(logits)
    first_batch_stats = jax.tree_util.tree_map(lambda x: x[0], state['batch_stats'])
  else:
    outputs = [apply(config) for config in configs]
    all_logits = [logits for logits, _ in outputs]
    first_batch_stats = outputs[0][1]['batch_stats']
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  teacher = (jax.lax.stop_gradient(jax.nn.softmax(all_logits[0])) if inplace_distillation
             else targets)
  losses = [optax.softmax_cross_entropy(all_logits[0], targets).mean()]
  losses += [optax.softmax_cross_entropy(logits, teacher).mean() for logits in all_logits[1:]]
  return sum(losses), (jnp.stack(losses), all_logits, first_batch_stats)


def _apply_mean_gradients(state: TrainState, grads, batch_stats, total: jax.Array,
                          learning_rate: jax.Array, num_devices: int):
  """Inside ``shard_map``: one update from the devices' mean gradient, BatchNorm statistics and
  loss; a non-finite step leaves the state as it was. Returns (state, mean loss, finite)."""
  # Inside shard_map the gradient of the replicated params already comes back summed over
  # devices (the transpose of the implicit broadcast is a psum): divide once for the mean.
  grads = jax.tree_util.tree_map(lambda g: g / num_devices, grads)
  mean = functools.partial(jax.lax.pmean, axis_name=parallel.DATA_AXIS)
  batch_stats = mean(batch_stats)
  total = mean(total)
  # One reduction (a NaN or inf anywhere makes the norm non-finite): checking every leaf on
  # its own doubled the step's compile time.
  finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
  updated = apply_scaled_gradients(state, grads, learning_rate, batch_stats=batch_stats)
  # No bad state can reach a checkpoint.
  new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), updated,
                                     state)
  return new_state, total, finite


def make_distillation_step(module: nn.Module, num_classes: int, cfg: Any,
                           draw_configs: Callable[[jax.Array, jax.Array, jax.Array], list],
                           member_names: Sequence[str], mesh: Mesh, fused: bool = True,
                           donate: bool = True, inplace_distillation: bool = True):
  """The jitted data-parallel step: (state, sharded batch, ``step_inputs``) -> (state, metrics).

  ``draw_configs(seed, step, device)`` gives the configs one device trains at one step, the
  teacher first; ``member_names`` name them in the metrics (``loss_<name>``, and
  ``<name>_accuracy`` of the first two). ``fused`` and ``inplace_distillation``: see ``sandwich_loss`` (joint retraining
  always distils; the supernet reads ``supernet.inplace_distillation``); ``donate``: the input
  state's buffers are reused for the output (the caller must not read the state it passed in).
  """
  num_devices = mesh.size

  def per_device(state: TrainState, batch, inputs):
    device = jax.lax.axis_index(parallel.DATA_AXIS)
    configs = draw_configs(inputs['seed'], state.step, device)
    loss_fn = functools.partial(
        sandwich_loss, module=module, images=batch['image'], labels=batch['label'],
        configs=configs, num_classes=num_classes, label_smoothing=cfg.label_smoothing,
        fused=fused, inplace_distillation=inplace_distillation)
    (total, (losses, logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.batch_stats)
    new_state, total, finite = _apply_mean_gradients(state, grads, batch_stats, total,
                                                     inputs['learning_rate'], num_devices)
    metrics = {'loss': total, 'finite': finite.astype(jnp.float32),
               'learning_rate': inputs['learning_rate']}
    mean = functools.partial(jax.lax.pmean, axis_name=parallel.DATA_AXIS)
    for name, member_logits in list(zip(member_names, logits))[:2]:
      metrics[f'{name}_accuracy'] = mean(
          jnp.mean(jnp.argmax(member_logits, -1) == batch['label']))
    losses = mean(losses)
    metrics.update({f'loss_{name}': losses[i] for i, name in enumerate(member_names)})
    return new_state, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0 if donate else ())


def make_train_step(network: Network, space: channels_lib.ChannelSpace, cfg: Any, mesh: Mesh,
                    **options):
  """The supernet's sandwich step; every device draws its own random sub-networks from the
  seed of its ``step_inputs``. ``options``: ``fused``, ``donate`` of ``make_distillation_step``."""
  draw = lambda seed, step, device: sandwich_configs(space, device_key(seed, step, device),
                                                     cfg.num_sandwich)
  return make_distillation_step(network.supernet(), network.num_classes, cfg, draw,
                                sandwich_member_names(cfg.num_sandwich), mesh,
                                inplace_distillation=cfg.inplace_distillation, **options)


def make_side_by_side_step(module: nn.Module, num_classes: int, cfg: Any, names: Sequence[str],
                           mesh: Mesh, donate: bool = True):
  """One data-parallel step of ``len(names)`` independent networks trained side by side: the
  masked supernet ``module`` vmapped over stacked parameters, BatchNorm statistics, optimizer
  state and configs, each network at its own config, on the same batch.

  (state with a leading network axis, sharded batch, ``step_inputs`` + ``configs``: unit ->
  (networks,) int32) -> (state, metrics: ``loss`` summed over the networks, ``loss_<name>`` and
  ``<name>_accuracy`` of each). Each network learns from the labels with label smoothing, as a
  physically slim network alone would: its channels beyond its config are zero in the weights
  (``retrain.embedded_variables``) and stay zero (zero inputs, zero gradients, zero weight
  decay), so it computes what the slim network computes (tests/test_side_by_side.py, in
  float64). The configs are an input: one compiled program for every set of that many configs.
  """
  num_devices = mesh.size

  def per_device(state: TrainState, batch, inputs):
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes),
                                  cfg.label_smoothing)

    def one_network(params, batch_stats, config):
      logits, updated = module.apply({'params': params, 'batch_stats': batch_stats},
                                     batch['image'], config, train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, (logits, updated['batch_stats'])

    def summed(params, batch_stats):
      losses, aux = jax.vmap(one_network)(params, batch_stats, inputs['configs'])
      return jnp.sum(losses), (losses, *aux)

    (total, (losses, logits, batch_stats)), grads = jax.value_and_grad(summed, has_aux=True)(
        state.params, state.batch_stats)
    new_state, total, finite = _apply_mean_gradients(state, grads, batch_stats, total,
                                                     inputs['learning_rate'], num_devices)
    mean = functools.partial(jax.lax.pmean, axis_name=parallel.DATA_AXIS)
    losses = mean(losses)
    accuracies = mean(jnp.mean(jnp.argmax(logits, -1) == batch['label'], axis=-1))
    metrics = {'loss': total, 'finite': finite.astype(jnp.float32),
               'learning_rate': inputs['learning_rate']}
    for i, name in enumerate(names):
      metrics[f'loss_{name}'] = losses[i]
      metrics[f'{name}_accuracy'] = accuracies[i]
    return new_state, metrics

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0 if donate else ())
