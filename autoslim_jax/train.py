"""Training runs: the loop every stage shares (resume, step, log, evaluate, checkpoint) and the
supernet's run. The jitted steps themselves are in ``steps.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from autoslim_jax import channels as channels_lib
from autoslim_jax import evaluate
from autoslim_jax import files
from autoslim_jax import input_pipeline
from autoslim_jax import metrics as metrics_lib
from autoslim_jax import parallel
from autoslim_jax import steps
from autoslim_jax.models.base import Network


class NonFiniteLossError(FloatingPointError):
  pass


def _host_copy(x):
  if isinstance(x, jax.Array) and x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return x


class Checkpoints:
  """Orbax checkpoints of the train state under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int):
    self.directory = files.absolute(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: steps.TrainState) -> None:
    # Saved from host copies of the (replicated) arrays: orbax writes numpy arrays 6.6x faster
    # than device arrays it must first slice per replica (bench/bench_checkpoint.py: 0.26 s
    # instead of 1.75 s on 8 CPU devices). Restoring gives device arrays placed as the target's.
    host_state = jax.tree_util.tree_map(_host_copy, flax.serialization.to_state_dict(state))
    self.manager.save(int(state.step), args=ocp.args.StandardSave(host_state))

  def restore(self, state: steps.TrainState) -> steps.TrainState:
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
        files.move(os.path.join(self.directory, str(step)), aside)
        parallel.sync(f'damaged_checkpoint_{step}')
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
                   ) -> steps.TrainState:
  """Trains (or resumes, or just restores a finished) supernet in ``workdir``.

  ``stop_after_step`` ends the run early after checkpointing that step, as a preemption would
  (for time-sliced jobs and the resume tests); the next call resumes from it.
  """
  cfg = config.supernet
  parallel.check_batch_size(cfg.eval_batch_size, 'supernet.eval_batch_size')
  mesh = parallel.make_mesh()
  eval_step = evaluate.make_batch_stats_eval_step(network.supernet(), mesh)

  def evaluate_max_and_min(state: steps.TrainState) -> dict[str, float]:
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
             lambda: steps.make_train_step(network, space, cfg, mesh, fused=cfg.fused_sandwich),
             source, evaluate_max_and_min, stop_after_step, restore_only)


def fit(name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
        workdir: str, network: Network, module: nn.Module,
        make_step: Callable[[], Callable], source: input_pipeline.DataSource,
        evaluate_fn: Callable[[steps.TrainState], dict[str, float]] | None = None,
        stop_after_step: int | None = None, restore_only: bool = False,
        create_state: Callable[[Callable], steps.TrainState] | None = None,
        step_configs: Any = None) -> steps.TrainState:
  """The training loop every stage shares: resume, step, log, evaluate, checkpoint.

  ``cfg`` is the stage's config section (batch size, epochs, optimizer, logging periods);
  ``make_step()`` builds the jitted step (state, batch, ``steps.step_inputs``); ``evaluate_fn(state)`` returns scalars to log
  every ``cfg.eval_every_steps`` and at the end. A finished run is only restored;
  ``restore_only`` refuses to train (a later stage asking for an earlier stage's result).
  ``create_state(make_tx)`` makes the initial state (default: ``module`` initialised at the
  config's seed); ``step_configs``, when given, go to the step as its input ``configs``.
  """
  parallel.check_batch_size(cfg.batch_size, f'{name}: batch_size')
  mesh = parallel.make_mesh()
  steps_per_epoch = input_pipeline.steps_per_epoch(source, cfg.batch_size)
  total_steps = max(1, int(round(cfg.num_epochs * steps_per_epoch)))
  schedule = steps.learning_rate_schedule(cfg, steps_per_epoch, total_steps)
  make_tx = lambda params: steps.create_optimizer(cfg, network, params)
  if create_state is None:
    state = steps.create_train_state(network, jax.random.key(config.seed), make_tx, module)
  else:
    state = create_state(make_tx)
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
  metrics_lib.log_parameters(name, state.params)
  train_step = make_step()
  learning_rates = steps.schedule_values(schedule, total_steps)
  batches = input_pipeline.train_batches(
      source, cfg.batch_size, config.seed, start_step, config.dataset.augmentation)
  writer = metrics_lib.MetricWriter(workdir, name)

  def check_finite(history, step, when):
    """Stops the run at the first non-finite step of ``history`` (the steps up to ``step``)."""
    first_step = step - len(history) + 1
    bad = [i for i, m in enumerate(history) if not m['finite']]
    if bad:
      members = [k[len('loss_'):] for k, v in history[bad[0]].items()
                 if k.startswith('loss_') and not np.isfinite(v)]
      where = (f'the loss of sub-network(s) {", ".join(members)}' if members else
               'the gradient (every sub-network\'s loss was finite)')
      raise NonFiniteLossError(
          f'{name}: non-finite {where} at step {first_step + bad[0]} (steps {first_step}-'
          f'{step} were checked {when}); those updates were not applied and the last '
          f'good checkpoint (step {checkpoints.latest_step()}) is kept. Lower the learning '
          f'rate or use float32.')

  pending, last_log_time, last_log_step = [], time.perf_counter(), start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      inputs = steps.step_inputs(learning_rates[step - 1], config.seed)
      if step_configs is not None:
        inputs['configs'] = step_configs
      state, metrics = train_step(state, parallel.shard_batch(next(batches), mesh), inputs)
      pending.append(metrics)
      is_last = step == total_steps
      if step % cfg.log_every_steps == 0 or is_last:
        history = jax.device_get(pending)
        check_finite(history, step, 'at this log')
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
        # The steps since the last log first (its period need not divide the checkpoints'): a
        # checkpoint written after a skipped non-finite step would hold a state that no run
        # reaches, under the wrong step, and be kept as the good one.
        if pending:
          check_finite(jax.device_get(pending), step, 'before the checkpoint of this step')
        checkpoints.save(state)
      if step == stop_after_step:
        break
  finally:
    writer.close()
    checkpoints.close()
  return state
