"""The AutoSlim pipeline behind ``python -m autoslim_jax.main``: supernet, search, retrain,
export, in that order, in one workdir.

Each stage skips itself when its outputs are complete and resumes when they are partial:
``W/supernet`` (checkpoints), ``W/search`` (trajectory, one JSON per target, search.json when
done), ``W/retrain/<target>/<autoslim|uniform>`` (checkpoints), and the export stage, which
calibrates BatchNorm, measures test accuracy, writes the slim networks to ``W/export`` and the
report: ``W/results.json``, ``W/results.md`` and ``W/plots/``. ``config.stages`` restricts the
stages; a stage whose inputs are missing says which stage to run first.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from autoslim_jax import compilation
from autoslim_jax import defaults
from autoslim_jax import deploy
from autoslim_jax import evaluate
from autoslim_jax import export
from autoslim_jax import files
from autoslim_jax import input_pipeline
from autoslim_jax import latency as latency_lib
from autoslim_jax import models
from autoslim_jax import parallel
from autoslim_jax import plots
from autoslim_jax import published as published_lib
from autoslim_jax import resources as resources_lib
from autoslim_jax import retrain
from autoslim_jax import search
from autoslim_jax import train

RESULTS_FILE = 'results.json'
# What this run compiled, per stage (compilation.CompileLog.summary), rewritten by every run.
COMPILATION_FILE = 'compilation.json'


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
  kwargs = config.model_kwargs.to_dict()
  parameters = models.factory_parameters(config.model)
  if 'dtype' in parameters:
    kwargs['dtype'] = dtype
  elif dtype != 'float32':
    raise ValueError(f'compute_dtype {dtype} needs a dtype argument in the factory of model '
                     f'{config.model!r}; its arguments: {sorted(parameters)}')
  network = models.create_network(config.model, config.mode_argument, **kwargs)
  network.fix_units(config.fixed_units)
  if not 0 < config.min_width <= network.max_width_mult:
    raise ValueError(f'min_width {config.min_width} must be in (0, max width '
                     f'{network.max_width_mult}]')
  space = network.channel_space(config.groups, config.min_width / network.max_width_mult)
  return network, space


class Evaluator:
  """BatchNorm calibration and test accuracy, compiled once per module."""

  def __init__(self, config: ml_collections.ConfigDict, source: input_pipeline.DataSource):
    self.config = config
    self.source = source
    self.mesh = parallel.make_mesh()
    parallel.check_batch_size(config.calibration.batch_size, 'calibration.batch_size')
    parallel.check_batch_size(config.retrain.eval_batch_size, 'retrain.eval_batch_size')
    self._steps = {}

  def _compiled(self, module):
    key = id(module)
    if key not in self._steps:
      self._steps[key] = (module, evaluate.make_calibration_step(module, self.mesh),
                          evaluate.make_eval_step(module, self.mesh))
    return self._steps[key][1:]

  def calibrated_test(self, module, variables: Mapping[str, Any], config=None,
                      split: str = 'test') -> tuple[dict[str, Any], dict[str, float]]:
    """(variables with calibrated BatchNorm, metrics on ``split``) of ``module`` at ``config``."""
    calibration_step, eval_step = self._compiled(module)
    calibration = self.config.calibration
    batch_stats = evaluate.calibrate_batch_stats(
        calibration_step, variables, input_pipeline.calibration_batches(
            self.source, calibration.num_images, calibration.batch_size), config, self.mesh)
    calibrated = {'params': variables['params'], 'batch_stats': batch_stats}
    metrics = evaluate.evaluate_config(
        eval_step, calibrated,
        input_pipeline.eval_batches(self.source, split, self.config.retrain.eval_batch_size),
        config, self.mesh)
    return calibrated, metrics


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False
        ) -> dict[str, Any] | None:
  """Checks the config, then runs the requested stages; returns the results (export stage).

  Every check that needs no compilation comes first (``check_before_compiling``), so a mistake
  is reported in seconds, not after a compile. ``overwrite`` lets a config other than the one
  that wrote ``workdir`` replace its outputs (without it, that is refused).
  """
  defaults.check_config(config)
  compilation.set_gpu_autotune_level(config.compilation.gpu_autotune_level)
  cache_dir = compilation.use_persistent_cache(config.compilation.cache_dir,
                                               config.compilation.min_compile_seconds)
  with compilation.recording() as compile_log:
    first, first_wall = len(compile_log.compilations), len(compile_log.stage_walls)
    start = time.perf_counter()
    try:
      return _run_stages(config, workdir, overwrite, cache_dir)
    finally:
      summary = compile_log.summary(first, first_wall)
      summary['total']['wall_seconds'] = round(time.perf_counter() - start, 2)
      logging.info('this run %s', compilation.describe(compile_log.compilations[first:]))
      if files.exists(os.path.join(workdir, CONFIG_FILE)) and parallel.is_main_process():
        files.write_atomic(os.path.join(workdir, COMPILATION_FILE),
                           json.dumps(summary, indent=1).encode())


def _run_stages(config: ml_collections.ConfigDict, workdir: str, overwrite: bool,
                cache_dir: str | None) -> dict[str, Any] | None:
  stages = defaults.parse_stages(config.stages)
  network, space = build_network(config)
  # Each training stage computes in its own compute_dtype (params stay float32); the search,
  # calibration and test run the float32 network.
  training_network, _ = build_network(config, config.supernet.compute_dtype)
  retrain_network, _ = build_network(config, config.retrain.compute_dtype)
  source = input_pipeline.create_source(config.dataset)
  check_before_compiling(config, network, space, source)
  searched = published_targets(config, network) if config.retrain.published else None
  claim_workdir(config, workdir, overwrite)
  logging.info('%s; %s; stages: %s; compiled programs kept in %s', network, space,
               ', '.join(stages), cache_dir or '(no cache: compilation.cache_dir is none)')
  logging.info('data %s: %s', source.name,
               ', '.join(f'{name} {count}' for name, count in source.num_examples.items()))
  last_stage = stages[-1]

  if config.retrain.published:
    supernet_variables = None
  else:
    supernet_variables, searched = supernet_and_search(config, workdir, network, training_network,
                                                       space, source, stages)
    if searched is None:
      return None

  # Stage 3: retraining from scratch (restored when only the export is asked for; nothing to
  # do once the export is written).
  retrain_dir = os.path.join(workdir, 'retrain')
  results_path = os.path.join(workdir, RESULTS_FILE)
  retrained = None
  if files.exists(results_path):
    logging.info('stage retrain: complete (the export is written: %s)', results_path)
  elif 'retrain' in stages or files.is_dir(retrain_dir):
    with compilation.stage('retrain'):
      retrained = retrain.run_retrain(config, retrain_dir, retrain_network, searched, source,
                                      restore_only='retrain' not in stages)
  if retrained is None and config.retrain.published and not files.exists(results_path):
    raise ValueError(f'the published networks are not retrained in {retrain_dir}; add retrain to '
                     'config.stages')
  if last_stage == 'retrain':
    return None

  # Stage 4: calibrate, test, export, report.
  if files.exists(results_path):
    logging.info('stage export: complete (%s)', results_path)
    results = files.read_json(results_path)
  else:
    with compilation.stage('export'):
      results = export_and_report(config, workdir, network, space, supernet_variables,
                                  searched, retrained, source)
  print_results(results, workdir)
  return results


def check_before_compiling(config, network, space, source) -> None:
  """The checks of a run that need no compilation: batch sizes against the devices, the data
  against the network, and targets against the range of MACs, params and memory (latency
  targets need measurements: the search checks them before its first step)."""
  check_data_fits(network, source)
  if config.export.onnx == 'always' and 'export' in defaults.parse_stages(config.stages):
    deploy.require_onnxruntime("config.export.onnx='always'")
    deploy.check_translatable(network)
  if config.search.latency_backend == 'onnxruntime' and (
      config.search.targets.latency_ms or config.search.measure_latency):
    deploy.require_onnxruntime("config.search.latency_backend='onnxruntime'")
  for key in ('supernet.batch_size', 'supernet.eval_batch_size', 'search.batch_size',
              'calibration.batch_size', 'retrain.batch_size', 'retrain.eval_batch_size'):
    section, field = key.split('.')
    parallel.check_batch_size(config[section][field], key)
  if not config.search.chunk_size:  # automatic: refused now if one candidate cannot fit
    search.automatic_chunk_size(network, config.search.batch_size, len(space.units))
  targets = search.parse_targets(config.search.targets, network)
  counted = [t for t in targets if t.metric in resources_lib.RESOURCES]
  if counted and not config.retrain.published:
    resource_model = resources_lib.ResourceModel(network)
    search.check_targets_reachable(counted, resource_model(space.max_config()),
                                   resource_model(space.min_config()))


CONFIG_FILE = 'config.json'
# Keys a rerun may change without changing what the workdir holds.
RERUN_KEYS = ('stages', 'compilation.cache_dir', 'compilation.min_compile_seconds',
              'compilation.gpu_autotune_level')


def describe_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                         keys: list[str]) -> str:
  """``key: saved there, current now`` for the first five of ``keys`` (flattened configs)."""
  return ('; '.join(f'{k}: {saved.get(k)!r} there, {current.get(k)!r} now' for k in keys[:5])
          + ('; ...' if len(keys) > 5 else ''))


def claim_workdir(config, workdir: str, overwrite: bool) -> None:
  """Records the config in ``workdir``; refuses a workdir written by another config (the
  outputs would mix two runs) unless ``overwrite``, which deletes them first."""
  path = os.path.join(workdir, CONFIG_FILE)
  text = config.to_json_best_effort(indent=1)
  current = traverse_util.flatten_dict(json.loads(text), sep='.')
  if files.exists(path):
    saved = traverse_util.flatten_dict(files.read_json(path), sep='.')
    # A key added to the defaults since the workdir was written changes nothing at its default;
    # one removed from them since means nothing now.
    defaults_now = traverse_util.flatten_dict(
        json.loads(defaults.get_default_config().to_json_best_effort()), sep='.')
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RERUN_KEYS and saved.get(k) != current.get(k)
                     and not (k not in saved and k in defaults_now
                              and current.get(k) == defaults_now[k])
                     and not (k not in current and k not in defaults_now))
    if changed and not overwrite:
      raise ValueError(f'{workdir} holds the outputs of another config '
                       f'({describe_differences(saved, current, changed)}); use a new '
                       f'--workdir, or --overwrite to delete its outputs and start again')
    if changed:
      logging.warning('--overwrite: deleting the outputs in %s of another config (%s)',
                      workdir, ', '.join(changed))
      files.empty_folder(workdir)
  files.write_atomic(path, text.encode())
  parallel.sync('claim_workdir')
  if not files.exists(path):
    raise ValueError(f'process {jax.process_index()} cannot see {path}, which process 0 has just '
                     f'written: every process of a multi-host run needs the same workdir (a gs:// '
                     f'bucket or a shared file system), not a local folder of its own host')



def supernet_and_search(config, workdir: str, network, training_network, space, source,
                        stages: list[str]):
  """Stages 1 and 2: (supernet variables, searched target records); records None when the
  last stage asked for is one of these two."""
  last_stage = stages[-1]
  with compilation.stage('supernet'):
    state = train.train_supernet(config, os.path.join(workdir, 'supernet'), training_network,
                                 space, source, restore_only='supernet' not in stages)
  supernet_variables = retrain.trained_variables(state)
  if last_stage == 'supernet':
    return supernet_variables, None

  search_dir = os.path.join(workdir, 'search')
  summary = search.read_summary(search_dir)
  if summary is None:
    if 'search' not in stages:
      raise ValueError(f'the search is not complete in {search_dir}; add search to '
                       f'config.stages')
    logging.info('stage search: greedy slimming on the held-out split')
    cfg = config.search
    with latency_lib.LatencyMeter(network.name, config.model_kwargs.to_dict(),
                                  cfg.latency_warmup, cfg.latency_repeats, cfg.latency_backend,
                                  cfg.latency_threads, network.mode_argument) as meter:
      def measure_latency(channels):
        # Hosts time differently: all use the main process's measurement (the others would
        # otherwise take different greedy steps and part ways).
        milliseconds = meter.measure(channels) if parallel.is_main_process() else 0.0
        return parallel.broadcast_from_main(milliseconds)

      with compilation.stage('search'):
        summary = search.run_search(config, search_dir, network, space, supernet_variables,
                                    source, latency_fn=measure_latency)
  else:
    logging.info('stage search: complete (%d steps, %d targets)', summary['steps'],
                 len(summary['targets']))
  return supernet_variables, None if last_stage == 'search' else summary['targets']


def published_targets(config, network) -> list[dict[str, Any]]:
  """Target records for ``config.retrain.published``: the published AutoSlim nets of the model,
  each with a MACs budget of its own MACs (for its uniform baseline)."""
  resource_model = resources_lib.ResourceModel(network)
  records = []
  for name in config.retrain.published:
    channel_list = list(published_lib.get(config.model, name).channel_num_list)
    try:
      channels = network.config_from_list(channel_list)
    except ValueError as e:
      raise ValueError(f'the published AutoSlim-{config.model} {name} does not fit the '
                       f'configured network ({network}): {e}') from None
    resources = resource_model(channels)
    records.append({'name': f'published_{name}', 'metric': 'macs', 'value': resources['macs'],
                    'channels': channels, **resources, 'heldout_accuracy': None})
  logging.info('retraining the published networks %s (no supernet, no search)',
               ', '.join(r['name'] for r in records))
  return records


def export_and_report(config, workdir: str, network, space, supernet_variables, searched,
                      retrained, source) -> dict[str, Any]:
  """Test accuracy (after BN calibration) of every net, slim exports, results and plots."""
  logging.info('stage export: BatchNorm calibration on %d training images, test accuracy, '
               'slim exports', config.calibration.num_images)
  evaluator = Evaluator(config, source)
  resource_model = resources_lib.ResourceModel(network)
  supernet = network.supernet()
  model_kwargs = config.model_kwargs.to_dict()
  export_dir = os.path.join(workdir, 'export')

  def describe(channels):
    return {'channels': dict(channels), **resource_model(channels)}

  check_images = deploy_check_images(source, config.export.check_images)
  input_description = deploy.input_description(network.input_shape, source.mean, source.std)

  def save(name, family, channels, variables):
    directory = os.path.join(export_dir, name, family)
    artifacts = deploy.write_artifacts(directory, network.slim_module(channels), variables,
                                       network.input_shape, check_images, config.export.onnx,
                                       config.export.platforms)
    export.save_slim(directory, network, model_kwargs, channels, variables,
                     {'input': input_description, **artifacts})
    return directory

  rows = []
  for record in searched:
    start = time.perf_counter()
    channels = record['channels']
    supernet_accuracy = None
    if supernet_variables is not None:  # None: published nets, retrained without a supernet
      calibrated, supernet_metrics = evaluator.calibrated_test(
          supernet, supernet_variables, space.as_arrays(channels))
      supernet_accuracy = supernet_metrics['accuracy']
    autoslim = {**describe(channels), 'latency_ms': record.get('latency_ms'),
                'heldout_accuracy': record['heldout_accuracy'],
                'supernet_test_accuracy': supernet_accuracy, 'test_accuracy': None}
    if network.official_layout is not None:
      autoslim['channel_num_list'] = network.config_to_list(channels)
    row = {'name': record['name'], 'metric': record['metric'], 'value': record['value'],
           'autoslim': autoslim, 'uniform': None, 'difference': None}
    if retrained is None:
      _, slim_vars = export.export_slim(network, calibrated, channels)
      autoslim['export'] = save(record['name'], 'supernet_slice', channels, slim_vars)
    for family in retrain.FAMILIES if retrained is not None else ():
      if family not in retrained:
        continue
      if family == 'autoslim':
        entry, family_channels = autoslim, channels
      else:
        baseline = retrain.baseline_for(network, record)
        family_channels = baseline['channels']
        entry = row['uniform'] = {'width_mult': baseline['width_mult'],
                                  **describe(family_channels),
                                  'latency_ms': baseline.get('latency_ms'),  # latency targets'
                                  'test_accuracy': None}
      if config.retrain.mode == 'individual':
        trained = retrained[family][record['name']]
        masked, variables = trained.masked, trained.variables
      else:
        masked, variables = True, retrain.trained_variables(retrained[family])
      if masked:  # the supernet's shapes: calibrated and tested through the supernet's programs
        masked_vars, metrics = evaluator.calibrated_test(supernet, variables,
                                                         space.as_arrays(family_channels))
        _, slim_vars = export.export_slim(network, masked_vars, family_channels)
      else:
        slim_vars, metrics = evaluator.calibrated_test(network.slim_module(family_channels),
                                                       variables)
      entry['test_accuracy'] = metrics['accuracy']
      entry['test_loss'] = metrics['loss']
      entry['export'] = save(record['name'], family, family_channels, slim_vars)
    if row['uniform'] is not None:
      row['difference'] = autoslim['test_accuracy'] - row['uniform']['test_accuracy']
    rows.append(row)
    logging.info('export %s: supernet test accuracy %s, retrained %s, uniform %s (%.1fs)',
                 record['name'], _format_accuracy(supernet_accuracy),
                 _format_accuracy(autoslim['test_accuracy']),
                 _format_accuracy(row['uniform'] and row['uniform']['test_accuracy']),
                 time.perf_counter() - start)

  results = {
      'model': config.model, 'model_kwargs': model_kwargs, 'dataset': source.name,
      'units': list(network.unit_names), 'max': describe(space.max_config()),
      'retrain': None if retrained is None else {
          'mode': config.retrain.mode, 'num_epochs': config.retrain.num_epochs,
          'batch_size': config.retrain.batch_size},
      'calibration_images': config.calibration.num_images,
      'test_images': source.num_examples['test'], 'targets': rows,
      'search_trajectory': os.path.join(workdir, 'search', search.TRAJECTORY_FILE)}
  plot_dir = os.path.join(workdir, 'plots')
  if supernet_variables is not None:
    trajectory = search.read_trajectory(os.path.join(workdir, 'search'))
    plots.plot_trajectory(trajectory, searched, os.path.join(plot_dir, 'search_trajectory.png'),
                          title=f'greedy slimming: {network.name} on {source.name}')
  else:
    results['search_trajectory'] = None
  plots.plot_accuracy_vs_macs(results, os.path.join(plot_dir, 'accuracy_vs_macs.png'))
  plots.plot_all_channels(results, plot_dir)
  files.write_atomic(os.path.join(workdir, 'results.md'), plots.results_table(results).encode())
  # Written last: its presence marks the export stage complete.
  files.write_atomic(os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=1).encode())
  return results


def deploy_check_images(source, num_images: int) -> np.ndarray:
  """The first ``num_images`` test images (fewer if the split is smaller), normalised: what the
  exported artifacts are checked on."""
  transform = input_pipeline.EvalTransform(source.image_shape, source.mean, source.std,
                                           source.resize)
  test = source.splits['test']
  return np.stack([transform(test[i])['image'] for i in range(min(num_images, len(test)))])


def _format_accuracy(value):
  return '-' if value is None else f'{value:.4f}'


def print_results(results: Mapping[str, Any], workdir: str) -> None:
  if not parallel.is_main_process():
    return
  print()
  print(plots.results_table(results))
  print(f'results: {os.path.join(workdir, RESULTS_FILE)}, {os.path.join(workdir, "results.md")}; '
        f'plots: {os.path.join(workdir, "plots")}; slim networks: '
        f'{os.path.join(workdir, "export")}')
