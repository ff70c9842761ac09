"""Greedy slimming (design.md, sections 1-2): from the max config, remove one channel group at a
time, from the unit whose removal costs the least held-out accuracy.

Each step builds one candidate per unit that can still lose a group and scores every candidate
on the held-out split with BatchNorm in batch-statistics mode. Candidates are scored in chunks of
``search.chunk_size`` configs vmapped over their channel counts inside one compiled function
(every chunk of every step has the same shape: the last chunk is padded with repeats), so the
whole search compiles once. Scores are exact sums over every held-out example, so chunked and
one-at-a-time evaluation choose identically (the scorer is `evaluate.make_candidate_scorer`).

Every resource target (MACs, params, memory, latency) is reached by the first config of the
trajectory at or under it; the search stops once every target is reached (or at the min config
when there are none). The trajectory is saved after every step and a restarted search continues
from its last step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from autoslim_jax import channels as channels_lib
from autoslim_jax import evaluate
from autoslim_jax import files
from autoslim_jax import input_pipeline
from autoslim_jax import parallel
from autoslim_jax import plots
from autoslim_jax import retrain
from autoslim_jax import resources as resources_lib
from autoslim_jax import tracing_labels
from autoslim_jax.models.base import Network

METRICS = ('macs', 'params', 'memory', 'latency_ms')
SCORES = ('accuracy', 'loss')
TRAJECTORY_FILE = 'trajectory.jsonl'
SETTINGS_FILE = 'settings.json'
SUMMARY_FILE = 'search.json'  # written last: the search is complete


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # e.g. 'macs_200M', 'latency_ms_5', 'macs_0.75x'
  metric: str  # one of METRICS
  value: float


def format_amount(value: float) -> str:
  """200e6 -> '200M', 3.5e6 -> '3.5M', 5 -> '5'."""
  for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
    if abs(value) >= scale:
      return f'{value / scale:.4g}{suffix}'
  return f'{value:.4g}'


def parse_targets(targets: ml_collections.ConfigDict, network: Network) -> list[Target]:
  """The config's targets, strictest last within each metric.

  ``macs_of_width: [0.75]`` is the MACs of the uniform 0.75x network (the paper's CIFAR budgets).
  """
  parsed = []
  for metric in METRICS:
    for value in sorted(targets[metric], reverse=True):
      if not value > 0:
        raise ValueError(f'search.targets.{metric}: {value} is not a positive number')
      parsed.append(Target(f'{metric}_{format_amount(value)}', metric, float(value)))
  resource_model = resources_lib.ResourceModel(network)
  for width in sorted(targets.macs_of_width, reverse=True):
    if not 0 < width <= network.max_width_mult:
      raise ValueError(f'search.targets.macs_of_width: {width} is not a width multiplier in '
                       f'(0, {network.max_width_mult}] (the supernet max width)')
    parsed.append(Target(f'macs_{width:g}x', 'macs',
                         float(resource_model(network.uniform_config(width))['macs'])))
  names = [t.name for t in parsed]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'search.targets: {duplicates} given twice')
  return parsed


def check_targets_reachable(targets: Sequence[Target], at_max: Mapping[str, float],
                            at_min: Mapping[str, float]) -> None:
  """Refuses, before any search step, a target that no config between min and max can meet."""
  for target in targets:
    low, high = at_min[target.metric], at_max[target.metric]
    if not low <= target.value <= high:
      raise ValueError(
          f'search target {target.name} ({target.metric} <= {target.value:g}) is outside the '
          f'reachable range: the min config has {target.metric} {low:g} and the max config '
          f'{high:g}; give a value in [{low:g}, {high:g}]')


def best_candidate(scores: Sequence[Mapping[str, float]], score: str) -> int:
  """Index of the candidate that keeps the most: accuracy (ties: lower loss) or loss alone.

  Remaining ties go to the first candidate (unit order), so the search is deterministic.
  """
  if score == 'accuracy':
    keys = [(s['correct'], -s['loss']) for s in scores]
  elif score == 'loss':
    keys = [(-s['loss'],) for s in scores]
  else:
    raise ValueError(f'unknown search.score {score!r}; valid: accuracy, loss')
  return max(range(len(keys)), key=lambda i: (keys[i], -i))


def first_under(trajectory: Sequence[Mapping[str, Any]], target: Target) -> int | None:
  """Index of the first trajectory step whose ``target.metric`` is at or under the target."""
  for index, step in enumerate(trajectory):
    if step[target.metric] is not None and step[target.metric] <= target.value:
      return index
  return None


def check_targets_reached(trajectory: Sequence[Mapping[str, Any]],
                          targets: Sequence[Target]) -> None:
  """Refuses a finished trajectory that never met a target, naming the closest step.

  The range check before the search measures the min config once; a latency target close to
  that measurement can still be missed, because latency is measured again at every step and
  varies from one measurement to the next. The trajectory stays saved, so a rerun with a
  reachable target in a new workdir, or a copy of this one, repeats no scoring work it needs.
  """
  for target in targets:
    if first_under(trajectory, target) is not None:
      continue
    measured = [(step[target.metric], step['step']) for step in trajectory
                if step[target.metric] is not None]
    if not measured:
      raise ValueError(f'search target {target.name}: no step of the search measured '
                       f'{target.metric}')
    closest, index = min(measured)
    channels = trajectory[index]['channels']
    raise ValueError(
        f'search target {target.name} ({target.metric} <= {target.value:g}) was not reached: the '
        f'search slimmed down to the min config, and the closest step, {index}, has '
        f'{target.metric} {closest:g} (channels {dict(channels)}). Measurements vary from run '
        f'to run; give a value of at least {closest:g} (in a new workdir: the saved search '
        f'settings name the targets)')


def read_trajectory(directory: str) -> list[dict[str, Any]]:
  path = os.path.join(directory, TRAJECTORY_FILE)
  if not files.exists(path):
    return []
  return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def write_trajectory(directory: str, trajectory: Sequence[Mapping[str, Any]]) -> None:
  """The whole file, atomically: a crash leaves either the old or the new trajectory."""
  text = ''.join(json.dumps(step) + '\n' for step in trajectory)
  files.write_atomic(os.path.join(directory, TRAJECTORY_FILE), text.encode())


# Peak temporary memory of scoring one candidate, in units of (a device's share of the batch x
# the network's largest intermediate of one image (``largest_feature_map``) x 4 bytes), beside
# the candidate's masked copy of the weights. XLA:CPU's memory analysis of the compiled scorer
# gives 2.9 for the CIFAR MobileNet v2 at 0.5x and 2.6 for a DenseNet stack (linear in the
# chunk; tests/test_search.py measures it); XLA on an H200 needed 109.4 GiB for 25 candidates of
# the CIFAR 1.5x net at 1,000 images (runs/accelerator_h200.md): 4.3 in these units. The GPU's
# figure, rounded up, is used everywhere (TPUs: not yet measured).
CANDIDATE_MEMORY_FACTOR = 4.5
# The share of a device's allocatable memory the candidates may take (weights, the batch and the
# runtime keep the rest).
USABLE_MEMORY = 0.9


def largest_feature_map(network: Network) -> int:
  """The most values one image has in any intermediate of the supernet's scoring pass (training
  mode, max widths): a conv output, and as well a concatenation, a padded map, a gated product.

  Read from the traced program with a symbolic batch: the values whose first axis is the batch.
  A layer's output alone misses what a DenseNet concatenates (several times a layer's output).
  """
  supernet, space = network.supernet(), network.channel_space()
  batch, = jax.export.symbolic_shape('batch')
  images = jax.ShapeDtypeStruct((batch,) + tuple(network.input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: supernet.init(jax.random.key(0), x, space.max_config()),
                             jax.ShapeDtypeStruct((2,) + tuple(network.input_shape), jnp.float32))

  def scoring_pass(variables, images):
    return supernet.apply(variables, images, space.max_config(), train=True,
                          mutable=['batch_stats'])[0]

  largest, pending = 0, [jax.make_jaxpr(scoring_pass)(variables, images).jaxpr]
  while pending:
    for eqn in pending.pop().eqns:
      for out in eqn.outvars:
        shape = getattr(out.aval, 'shape', ())
        if shape and not isinstance(shape[0], (int, np.integer)):  # the symbolic batch
          largest = max(largest, math.prod(shape[1:]))
      sub = tracing_labels.sub_jaxpr(eqn)
      if sub is not None:
        pending.append(sub[0])
  return largest


def candidate_memory_terms(network: Network) -> tuple[float, int]:
  """Bytes of one candidate's feature maps per image (``CANDIDATE_MEMORY_FACTOR`` x the
  largest) and of its masked copy of the weights."""
  weights = resources_lib.ResourceModel(network)(network.channel_space().max_config())['params']
  return CANDIDATE_MEMORY_FACTOR * largest_feature_map(network) * 4, weights * 4


def candidate_memory_bytes(network: Network, images_per_device: int) -> int:
  """A device's memory for scoring one more candidate at the device's share of the batch."""
  per_image, weights = candidate_memory_terms(network)
  return int(images_per_device * per_image + weights)


def device_memory_bytes() -> int | None:
  """What the allocator of this process's first device may hand out; None on CPU (host memory)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None


def balanced_chunk_size(num_candidates: int, most_per_call: int) -> int:
  """The smallest chunk that scores ``num_candidates`` in as few calls as chunks of
  ``most_per_call`` would: 25 candidates with room for 20 a call are two calls of 13 (the last
  padded by one), not 20 and a padded 20 (15 candidates of wasted work)."""
  calls = -(-num_candidates // most_per_call)
  return -(-num_candidates // calls)


def automatic_chunk_size(network: Network, batch_size: int, num_candidates: int,
                         memory: int | None = None, num_devices: int | None = None) -> int:
  """Candidates per vmapped call that fit in a device's memory (search.chunk_size 0),
  balanced over the calls (``balanced_chunk_size``).

  Each device holds its share of the global batch for every candidate of a chunk; the peak is
  about ``CANDIDATE_MEMORY_FACTOR`` x that share x the largest feature map in float32. Without a
  memory figure (CPU) every candidate of a step goes in one call. Refused, before anything
  compiles, when not even one candidate fits.
  """
  memory = device_memory_bytes() if memory is None else memory
  if memory is None:
    return num_candidates
  num_devices = num_devices or jax.device_count()
  per_device = batch_size // num_devices
  per_image, weights = candidate_memory_terms(network)
  per_candidate = int(per_device * per_image + weights)
  chunk = int(USABLE_MEMORY * memory // per_candidate)
  if chunk < 1:
    fits = max(0, int((USABLE_MEMORY * memory - weights) // per_image)) * num_devices
    raise ValueError(
        f'search.batch_size {batch_size} on {num_devices} device(s): one candidate needs about '
        f'{per_candidate / 2**30:.1f} GiB of a device\'s memory ({per_device} images x the '
        f'largest feature map of {per_image / CANDIDATE_MEMORY_FACTOR / 4:,.0f} values, and a '
        f'masked copy of the weights), more than the {memory / 2**30:.1f} GiB a '
        f'device has; use search.batch_size <= {fits} or more devices (the BatchNorm batch is '
        f'the global batch, so more devices hold it in smaller shares)')
  return balanced_chunk_size(num_candidates, chunk)


BATCHNORM_SEMANTICS = 'global batch, any device count'


def search_settings(config: ml_collections.ConfigDict, targets: Sequence[Target]) -> dict:
  """What decides the trajectory; a workdir searched with other settings is refused.

  The device count is not among them: every candidate is scored with the global batch's
  BatchNorm statistics, so a search resumed on another topology continues identically (to float
  rounding; tests/test_search.py). ``batchnorm`` names that semantics, so a search begun with
  per-device statistics (before 2026-11-29) is refused rather than continued in another regime.
  """
  cfg = config.search
  return {'batchnorm': BATCHNORM_SEMANTICS,
          'model': config.model, 'model_kwargs': config.model_kwargs.to_dict(),
          'groups': config.groups, 'min_width': config.min_width, 'seed': config.seed,
          'score': cfg.score, 'num_images': cfg.num_images, 'batch_size': cfg.batch_size,
          'targets': [dataclasses.asdict(t) for t in targets]}


def check_settings(directory: str, settings: Mapping[str, Any]) -> None:
  path = os.path.join(directory, SETTINGS_FILE)
  if files.exists(path):
    saved = files.read_json(path)
    if saved != json.loads(json.dumps(settings)):
      changed = sorted(k for k in set(saved) | set(settings)
                       if json.dumps(saved.get(k)) != json.dumps(settings.get(k)))
      raise ValueError(f'{directory} holds a search with other settings ({", ".join(changed)} '
                       f'differ); use a new workdir or delete {directory} to search again')
  else:
    files.write_atomic(path, json.dumps(settings, indent=1).encode())


def run_search(config: ml_collections.ConfigDict, workdir: str, network: Network,
               space: channels_lib.ChannelSpace, variables: Mapping[str, Any],
               source: input_pipeline.DataSource,
               latency_fn: Callable[[Mapping[str, int]], float] | None = None,
               stop_after_step: int | None = None) -> dict[str, Any]:
  """Greedy slimming of the supernet ``variables``; resumes from ``workdir`` and returns the
  summary (the targets' records), also written to ``workdir/search.json``.

  ``latency_fn(config) -> ms`` measures the slim network; required for latency targets.
  ``stop_after_step`` ends after saving that step (as a preemption would), for tests.
  """
  cfg = config.search
  targets = parse_targets(cfg.targets, network)
  measure_latency = cfg.measure_latency or any(t.metric == 'latency_ms' for t in targets)
  if measure_latency and latency_fn is None:
    raise ValueError('latency targets need a latency measurement (latency_fn)')
  if cfg.score not in SCORES:  # refused now, not after the first step
    raise ValueError(f'unknown search.score {cfg.score!r}; valid: {", ".join(SCORES)}')
  resource_model = resources_lib.ResourceModel(network)

  def resources_of(channel_config):
    result = {k: int(v) for k, v in resource_model(channel_config).items()}
    result['latency_ms'] = latency_fn(channel_config) if measure_latency else None
    return result

  max_config, min_config = space.max_config(), space.min_config()
  bounds = {}
  if targets:
    bounds = {'max': resources_of(max_config), 'min': resources_of(min_config)}
    check_targets_reachable(targets, bounds['max'], bounds['min'])
  check_settings(workdir, search_settings(config, targets))

  parallel.check_batch_size(cfg.batch_size, 'search.batch_size')
  mesh = parallel.make_mesh()
  if cfg.chunk_size < 0:
    raise ValueError(f'search.chunk_size must be >= 0 (0 = automatic), got {cfg.chunk_size}')
  # At most search.chunk_size a call, balanced over the calls of a step of every unit's
  # candidate; later steps (fewer candidates) keep that shape, so the scorer compiles once.
  chunk_size = balanced_chunk_size(len(space.units), cfg.chunk_size) if cfg.chunk_size else (
      automatic_chunk_size(network, cfg.batch_size, len(space.units)))
  # The held-out batches stay on the host for the whole search, in their stored dtype (uint8:
  # 7.5 GB for ImageNet's 50,000 images, not 30 GB of float32), normalised on the device.
  scorer = evaluate.make_candidate_scorer(network.supernet(), mesh, source.mean, source.std)
  variables = parallel.replicate(variables, mesh)
  num_images = cfg.num_images or None
  heldout = list(input_pipeline.eval_batches(source, 'heldout', cfg.batch_size, num_images,
                                             keep_dtype=True))

  def score(configs):
    return evaluate.score_configs(scorer, variables, heldout, configs, space, chunk_size, mesh)

  def reached_all(trajectory):
    return all(first_under(trajectory, t) is not None for t in targets)

  trajectory = read_trajectory(workdir)
  if trajectory:
    logging.info('search: resuming after step %d', trajectory[-1]['step'])
  else:
    start = time.perf_counter()
    (scores,) = score([max_config])
    trajectory = [{'step': 0, 'unit': None, 'channels': max_config,
                   'heldout_accuracy': scores['accuracy'], 'heldout_loss': scores['loss'],
                   **(bounds.get('max') or resources_of(max_config)), 'candidates': 0,
                   'seconds': time.perf_counter() - start}]
    write_trajectory(workdir, trajectory)
  logging.info('search: targets %s; %d held-out images in %d batches; %d candidates per call',
               ', '.join(t.name for t in targets) or 'none (down to the min config)',
               min(num_images or source.num_examples['heldout'],
                   source.num_examples['heldout']), len(heldout), chunk_size)

  while not (targets and reached_all(trajectory)) and trajectory[-1]['step'] != stop_after_step:
    current = trajectory[-1]['channels']
    options = space.slimming_candidates(current)
    if not options:
      break
    start = time.perf_counter()
    scores = score([c for _, c in options])
    chosen = best_candidate(scores, cfg.score)
    unit, channel_config = options[chosen]
    trajectory.append({
        'step': len(trajectory), 'unit': unit, 'channels': channel_config,
        'heldout_accuracy': scores[chosen]['accuracy'], 'heldout_loss': scores[chosen]['loss'],
        **resources_of(channel_config), 'candidates': len(options),
        'seconds': time.perf_counter() - start})
    write_trajectory(workdir, trajectory)
    step = trajectory[-1]
    reached = sum(first_under(trajectory, t) is not None for t in targets)
    logging.info('search step %d: %s %d -> %d channels (%d candidates, %.2fs); held-out '
                 'accuracy %.4f loss %.4f; MACs %.4gM%s; targets reached %d/%d',
                 step['step'], unit, current[unit], channel_config[unit], len(options),
                 step['seconds'], step['heldout_accuracy'], step['heldout_loss'],
                 step['macs'] / 1e6,
                 '' if step['latency_ms'] is None else f', latency {step["latency_ms"]:.3f} ms',
                 reached, len(targets))

  if trajectory[-1]['step'] == stop_after_step and not (targets and reached_all(trajectory)):
    return {'complete': False, 'steps': len(trajectory) - 1}
  return finish_search(workdir, network, trajectory, targets, latency_fn)


def finish_search(workdir: str, network: Network, trajectory: Sequence[Mapping[str, Any]],
                  targets: Sequence[Target],
                  latency_fn: Callable[[Mapping[str, int]], float] | None = None
                  ) -> dict[str, Any]:
  """Writes each target's record, the trajectory plot and the summary (completion marker).

  A latency target's record also gets its uniform baseline (``uniform_baseline``), measured
  here once: retraining and the report read it rather than measure again.
  """
  check_targets_reached(trajectory, targets)
  records = []
  for target in targets:
    index = first_under(trajectory, target)
    record = {'name': target.name, 'metric': target.metric, 'value': target.value,
              **{k: v for k, v in trajectory[index].items() if k not in ('candidates',
                                                                          'seconds')}}
    if network.official_layout is not None:
      record['channel_num_list'] = network.config_to_list(record['channels'])
    if target.metric == 'latency_ms':
      record['uniform_baseline'] = retrain.baseline_for(network, record, latency_fn)
    records.append(record)
    files.write_atomic(os.path.join(workdir, 'targets', f'{target.name}.json'),
                        json.dumps(record, indent=1).encode())
  plot = plots.plot_trajectory(trajectory, records, os.path.join(workdir, 'trajectory.png'),
                               title=f'greedy slimming: {network.name}')
  summary = {'complete': True, 'steps': len(trajectory) - 1, 'targets': records,
             'trajectory': os.path.join(workdir, TRAJECTORY_FILE), 'plot': plot}
  files.write_atomic(os.path.join(workdir, SUMMARY_FILE),
                      json.dumps(summary, indent=1).encode())
  return summary


def read_summary(workdir: str) -> dict[str, Any] | None:
  """The finished search's summary, or None if the search has not completed."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not files.exists(path):
    return None
  return files.read_json(path)
