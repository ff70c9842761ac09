r"""Experiments on top of the pipeline: does the search beat uniform width across seeds, and does
the supernet rank networks as training them from scratch would?

  python -m autoslim_jax.experiment --config=configs/quickstart.py --workdir=W --seeds=0,1,2
  python -m autoslim_jax.experiment --config=configs/cifar10_sample_cpu.py --workdir=W \
      --npz=PATH/cifar10_subset.npz

1. **Seeds**: the whole pipeline (``pipeline.run``) once per seed in ``W/seed_<s>`` (each resumes
   like any run), then per target the mean and standard deviation over seeds of the AutoSlim and
   uniform nets' test accuracy, their MACs, params and memory, and their difference paired seed
   by seed (a seed's two nets see the same batches) with its 95% confidence interval (Student's
   t; undefined for one seed): ``W/summary.json``, ``W/summary.md``, ``W/accuracy_vs_macs.png``.
2. **Estimator quality** (``W/estimator/``): configs over the budget range of the first seed's
   greedy path (its searched and uniform nets, configs from the path between them, random
   configs), each scored by the supernet on the held-out split with BatchNorm in batch-statistics
   mode (as the search scores) and after BatchNorm calibration, and trained from scratch with the
   retrain recipe (the searched and uniform nets were already, in the seed's run). Kendall's tau
   between each supernet score and the from-scratch test accuracy, and a scatter plot:
   ``estimator.json``, ``estimator.md``, ``estimator.png``.
3. **Ablations**: with ``--estimator_reference=BASE/estimator/estimator.json`` the study scores
   the base study's configs with this run's supernet and reuses their from-scratch accuracies
   (same seed, data and retrain recipe, checked); ``compare_runs`` tabulates a base and its
   variants (``runs/cifar10_sample_ablations.sh``).

Every run's command, versions, hardware and wall time go into ``W/summary.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from flax import traverse_util
from scipy import stats

from autoslim_jax import compilation
from autoslim_jax import defaults
from autoslim_jax import evaluate
from autoslim_jax import files
from autoslim_jax import input_pipeline
from autoslim_jax import main as main_lib
from autoslim_jax import parallel
from autoslim_jax import pipeline
from autoslim_jax import plots
from autoslim_jax import resources as resources_lib
from autoslim_jax import retrain
from autoslim_jax import search
from autoslim_jax import train

SUMMARY_FILE = 'summary.json'
ESTIMATOR_DIR = 'estimator'
ESTIMATOR_FILE = 'estimator.json'
# Per-net numbers averaged over seeds (accuracies are fractions, resources counts).
AUTOSLIM_KEYS = ('test_accuracy', 'supernet_test_accuracy', 'heldout_accuracy', 'macs', 'params',
                 'memory')
UNIFORM_KEYS = ('test_accuracy', 'width_mult', 'macs', 'params', 'memory')
# Of the paired difference's interval (``paired_difference``).
CONFIDENCE = 0.95
VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-cpu', 'numpy')


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f'seed_{seed}')


def with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def check_experiment(config: ml_collections.ConfigDict, seeds: Sequence[int]) -> None:
  """Refuses what the experiment cannot summarize, before any run starts."""
  if len(seeds) < 1 or len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds must be distinct integers, e.g. 0,1,2; got {list(seeds)}')
  stages = defaults.parse_stages(config.stages)
  if stages != list(defaults.STAGES):
    raise ValueError(f'the experiment runs every stage; config.stages is {config.stages!r}')
  if config.retrain.published or config.retrain.mode != 'individual':
    raise ValueError('the experiment compares individually retrained searched nets with uniform '
                     'ones: needs retrain.mode=individual and no retrain.published')
  if not config.retrain.uniform_baseline:
    raise ValueError('the experiment compares with uniform width: retrain.uniform_baseline must '
                     'be True')


def environment() -> dict[str, Any]:
  """What a recorded number ran on: command, versions, hardware."""
  versions = {}
  for package in VERSIONED:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  devices = jax.devices()
  return {'command': ' '.join([os.path.basename(sys.executable), '-m', 'autoslim_jax.experiment',
                               *sys.argv[1:]]),
          'python': platform.python_version(), 'versions': versions,
          'machine': platform.machine(), 'processor': cpu_model(),
          'cpu_count': os.cpu_count(), 'platform': devices[0].platform,
          'devices': f'{len(devices)} x {devices[0].device_kind}',
          'processes': jax.process_count()}


def cpu_model() -> str | None:
  """The CPU's model name (Linux), else what platform knows."""
  try:
    with open('/proc/cpuinfo') as cpuinfo:
      for line in cpuinfo:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def run_seeds(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
              overwrite: bool = False) -> tuple[dict[int, dict], dict[int, float]]:
  """The pipeline once per seed: ({seed: results}, {seed: wall seconds of this call})."""
  results, seconds = {}, {}
  for i, seed in enumerate(seeds):
    logging.info('experiment: seed %d (%d of %d) in %s', seed, i + 1, len(seeds),
                 seed_workdir(workdir, seed))
    start = time.perf_counter()
    results[seed] = pipeline.run(with_seed(config, seed), seed_workdir(workdir, seed), overwrite)
    seconds[seed] = time.perf_counter() - start
  return results, seconds


def mean_std(values: Sequence[float | None]) -> dict[str, Any] | None:
  """Mean, sample standard deviation (0 for one value) and the values; None if there are none."""
  values = [float(v) for v in values if v is not None]
  if not values:
    return None
  return {'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 'values': values}


def paired_difference(differences_by_seed: Mapping[int, float | None],
                      confidence: float = CONFIDENCE) -> dict[str, Any] | None:
  """AutoSlim minus uniform test accuracy, paired seed by seed (a seed's two nets train on the
  same data order, so its difference cancels what the seed does to both): ``mean_std`` of the
  per-seed differences, the seeds they come from, and the ``confidence`` interval of their mean,
  Student's t with n - 1 degrees of freedom (``ci``: [low, high]; None for one seed, where it
  is undefined). None if no seed has both accuracies."""
  seeds = [s for s, d in differences_by_seed.items() if d is not None]
  summary = mean_std([differences_by_seed[s] for s in seeds])
  if summary is None:
    return None
  n = len(seeds)
  interval = None
  if n > 1:
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * summary['std'] / np.sqrt(n)
    interval = [summary['mean'] - half, summary['mean'] + half]
  return {**summary, 'seeds': seeds, 'confidence': confidence, 'ci': interval}


def summarize_seeds(results_by_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """Per target, the mean and standard deviation over seeds of both nets' numbers, and their
  paired difference with its confidence interval (``paired_difference``)."""
  seeds = list(results_by_seed)
  first = results_by_seed[seeds[0]]
  names = [t['name'] for t in first['targets']]
  for seed, results in results_by_seed.items():
    if [t['name'] for t in results['targets']] != names:
      raise ValueError(f'seed {seed} has targets {[t["name"] for t in results["targets"]]}, '
                       f'seed {seeds[0]} has {names}: the seeds ran different configs')
  rows = []
  for index, name in enumerate(names):
    per_seed = [results_by_seed[s]['targets'][index] for s in seeds]
    differences = [t['difference'] for t in per_seed]
    rows.append({
        'name': name, 'metric': per_seed[0]['metric'], 'value': per_seed[0]['value'],
        'autoslim': {k: mean_std([t['autoslim'].get(k) for t in per_seed]) for k in AUTOSLIM_KEYS},
        'uniform': {k: mean_std([(t['uniform'] or {}).get(k) for t in per_seed])
                    for k in UNIFORM_KEYS},
        'difference': paired_difference(dict(zip(seeds, differences))),
        'autoslim_better': sum(d is not None and d > 0 for d in differences),
        'channels': {str(s): t['autoslim']['channels'] for s, t in zip(seeds, per_seed)}})
  return {'model': first['model'], 'model_kwargs': first['model_kwargs'],
          'dataset': first['dataset'], 'seeds': seeds, 'test_images': first['test_images'],
          'retrain': first['retrain'], 'max': first['max'], 'targets': rows}


# Estimator quality.


def path_configs(trajectory: Sequence[Mapping[str, Any]], count: int) -> list[dict]:
  """``count`` configs of the greedy path at evenly spaced MACs between its ends (exclusive)."""
  macs = np.array([step['macs'] for step in trajectory], np.float64)
  wanted = np.linspace(macs.max(), macs.min(), count + 2)[1:-1]
  chosen = []
  for value in wanted:
    index = int(np.argmin(np.abs(macs - value)))
    if index not in chosen:
      chosen.append(index)
  return [dict(trajectory[i]['channels']) for i in chosen]


def random_configs(network, space, low: float, high: float, count: int, seed: int,
                   draws: int = 4000) -> list[dict]:
  """``count`` random configs with MACs spread over [low, high]: one per equal MACs bin.

  Each draw picks a width level p ~ U(0, 1) and then every unit's choice independently,
  Binomial(choices - 1, p): unlike uniform per-unit draws (whose MACs crowd the middle of the
  range) these cover it from min to max, and units still vary independently.
  """
  resource_model = resources_lib.ResourceModel(network)
  rng = np.random.default_rng(seed)
  bins = np.linspace(low, high, count + 1)
  picked: list[dict | None] = [None] * count
  for _ in range(draws):
    level = rng.uniform()
    config = {u.name: u.choices[rng.binomial(len(u.choices) - 1, level)] for u in space.units}
    macs = resource_model(config)['macs']
    if low <= macs <= high:
      slot = min(int(np.searchsorted(bins, macs, side='right')) - 1, count - 1)
      picked[slot] = picked[slot] or config
    if all(picked):
      break
  return [c for c in picked if c is not None]


def kendall(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
  """Kendall's tau-b of two rankings and its two-sided p-value (scipy); None where undefined
  (fewer than two configs, or one side all ties)."""
  result = stats.kendalltau(x, y)
  finite = lambda value: float(value) if np.isfinite(value) else None
  return {'tau': finite(result.statistic), 'p_value': finite(result.pvalue)}


def supernet_scores(config: ml_collections.ConfigDict, network, space, variables,
                    source: input_pipeline.DataSource, configs: Sequence[Mapping[str, int]]
                    ) -> list[dict[str, float]]:
  """Each config's held-out accuracy in the supernet: with batch statistics as the search scores
  (same batch size and images), and after BatchNorm calibration (as a deployed net runs)."""
  mesh = parallel.make_mesh()
  supernet = network.supernet()
  heldout = list(input_pipeline.eval_batches(source, 'heldout', config.search.batch_size,
                                             config.search.num_images or None, keep_dtype=True))
  batch_stats = evaluate.score_configs(
      evaluate.make_candidate_scorer(supernet, mesh, source.mean, source.std),
      parallel.replicate(variables, mesh),
      heldout, configs, space, config.search.chunk_size or search.automatic_chunk_size(
          network, config.search.batch_size, len(configs)), mesh)
  evaluator = pipeline.Evaluator(config, source)
  scores = []
  for channels, scored in zip(configs, batch_stats):
    _, calibrated = evaluator.calibrated_test(supernet, variables, space.as_arrays(channels),
                                              split='heldout')
    scores.append({'heldout_batch_stats': scored['accuracy'],
                   'heldout_calibrated': calibrated['accuracy']})
  return scores


def scratch_accuracy(config: ml_collections.ConfigDict, workdir: str, network,
                     source: input_pipeline.DataSource, channels: Mapping[str, int], name: str
                     ) -> float:
  """Test accuracy (after calibration) of ``channels`` trained from scratch with the retrain
  recipe in ``workdir`` (resumed from its checkpoints, like the pipeline's retraining)."""
  training_network, _ = pipeline.build_network(config, config.retrain.compute_dtype)
  state = retrain.train_slim(config, workdir, training_network, channels, source, name)
  _, metrics = pipeline.Evaluator(config, source).calibrated_test(
      network.slim_module(channels), retrain.trained_variables(state))
  return metrics['accuracy']


def scratch_recipe(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a from-scratch accuracy depends on besides the channels: seed, model, data, retrain
  and calibration settings (not the supernet or the search)."""
  recipe = json.loads(config.to_json_best_effort())
  return {k: recipe[k] for k in ('seed', 'model', 'model_kwargs', 'dataset', 'retrain',
                                 'calibration')}


def reference_entries(config: ml_collections.ConfigDict, reference: Mapping[str, Any]
                      ) -> list[dict[str, Any]]:
  """The configs of an earlier estimator study with their from-scratch accuracies, to score with
  another supernet (an ablation) without training them again; refuses a study whose from-scratch
  recipe differs from ``config``'s (its accuracies would not be the ones this config gives)."""
  if 'scratch_recipe' not in reference:
    raise ValueError('the reference estimator study records no scratch_recipe (written before '
                     'it was recorded): run its experiment command again to rewrite it')
  ours = traverse_util.flatten_dict(scratch_recipe(config), sep='.')
  theirs = traverse_util.flatten_dict(reference['scratch_recipe'], sep='.')
  changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
  if changed:
    raise ValueError('the reference estimator study trained its configs from scratch with '
                     f'another recipe ({pipeline.describe_differences(theirs, ours, changed)}): '
                     'its accuracies do not apply; give a study of the same seed, model, data '
                     'set, retrain and calibration settings')
  entries = []
  for entry in reference['configs']:
    # The reference's searched nets are not this run's: a kind of their own in the plot.
    kind = 'reference' if entry['kind'] == 'autoslim' else entry['kind']
    entries.append({'name': f'reference_{entry["name"]}', 'kind': kind,
                    'channels': entry['channels'],
                    'scratch_test_accuracy': entry['scratch_test_accuracy']})
  return entries


def config_key(channels: Mapping[str, int]) -> tuple:
  """A hashable identity of a channel config (to find the same config in two studies)."""
  return tuple(sorted(channels.items()))


def estimator_quality(config: ml_collections.ConfigDict, workdir: str, seed: int,
                      num_path: int, num_random: int,
                      reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Supernet scores against from-scratch accuracy for the seed's searched and uniform nets,
  ``num_path`` configs of its greedy path and ``num_random`` random ones (module docstring);
  with a ``reference`` study, its configs instead of new path and random ones
  (``reference_entries``)."""
  config = with_seed(config, seed)
  run_dir = seed_workdir(workdir, seed)
  results = files.read_json(os.path.join(run_dir, pipeline.RESULTS_FILE))
  network, space = pipeline.build_network(config)
  source = input_pipeline.create_source(config.dataset)
  state = train.train_supernet(config, os.path.join(run_dir, 'supernet'), network, space, source,
                               restore_only=True)
  variables = retrain.trained_variables(state)
  trajectory = search.read_trajectory(os.path.join(run_dir, 'search'))
  resource_model = resources_lib.ResourceModel(network)

  entries = []
  for target in results['targets']:
    for family in retrain.FAMILIES:
      entries.append({'name': f'{target["name"]}_{family}', 'kind': family,
                      'channels': target[family]['channels'],
                      'scratch_test_accuracy': target[family]['test_accuracy']})
  low = min(step['macs'] for step in trajectory)
  high = max(step['macs'] for step in trajectory)
  if reference is not None:
    entries += reference_entries(config, reference)
  else:
    entries += [{'name': f'path_{i}', 'kind': 'path', 'channels': c}
                for i, c in enumerate(path_configs(trajectory, num_path))]
    entries += [{'name': f'random_{i}', 'kind': 'random', 'channels': c}
                for i, c in enumerate(random_configs(network, space, low, high, num_random, seed))]
  seen, unique = set(), []
  for entry in entries:  # a path config may be a searched one: score and train it once
    entry['channels'] = {k: int(v) for k, v in entry['channels'].items()}
    key = config_key(entry['channels'])
    if key not in seen:
      seen.add(key)
      unique.append(entry)
  entries = unique
  logging.info('estimator: %d configs (%s) from %.4gM to %.4gM MACs', len(entries),
               ', '.join(f'{k} {sum(e["kind"] == k for e in entries)}'
                         for k in ('autoslim', 'uniform', 'path', 'random', 'reference')),
               low / 1e6,
               high / 1e6)

  scores = supernet_scores(config, network, space, variables, source,
                           [e['channels'] for e in entries])
  directory = os.path.join(workdir, ESTIMATOR_DIR)
  for i, (entry, score) in enumerate(zip(entries, scores)):
    entry.update(score)
    entry.update({k: int(v) for k, v in resource_model(entry['channels']).items()})
    if entry.get('scratch_test_accuracy') is None:
      start = time.perf_counter()
      entry['scratch_test_accuracy'] = scratch_accuracy(
          config, os.path.join(directory, 'scratch', entry['name']), network, source,
          entry['channels'], f'estimator {entry["name"]}')
      logging.info('estimator %d/%d %s: %.4gM MACs, supernet %.4f (batch stats) %.4f '
                   '(calibrated), from scratch %.4f (%.0fs)', i + 1, len(entries), entry['name'],
                   entry['macs'] / 1e6, entry['heldout_batch_stats'],
                   entry['heldout_calibrated'], entry['scratch_test_accuracy'],
                   time.perf_counter() - start)
  scratch = [e['scratch_test_accuracy'] for e in entries]
  report = {
      'seed': seed, 'supernet': os.path.join(run_dir, 'supernet'),
      'scratch_recipe': scratch_recipe(config), 'configs': entries,
      'kendall_tau': {'batch_stats': kendall([e['heldout_batch_stats'] for e in entries], scratch),
                      'calibrated': kendall([e['heldout_calibrated'] for e in entries], scratch),
                      # The reference any estimator must beat over a budget range: bigger is
                      # better.
                      'macs': kendall([e['macs'] for e in entries], scratch)}}
  files.write_atomic(os.path.join(directory, 'estimator.md'), plots.estimator_table(report).encode())
  plots.plot_estimator(report, os.path.join(directory, 'estimator.png'))
  files.write_atomic(os.path.join(directory, ESTIMATOR_FILE), json.dumps(report, indent=1).encode())
  return report


def shared_config_taus(base: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
  """Kendall's taus of ``report``'s supernet scores over the configs it shares with the ``base``
  study (an ablation scores the base's configs: the same configs compare the two supernets)."""
  base_keys = {config_key(e['channels']) for e in base['configs']}
  shared = [e for e in report['configs'] if config_key(e['channels']) in base_keys]
  scratch = [e['scratch_test_accuracy'] for e in shared]
  return {'configs': len(shared),
          'batch_stats': kendall([e['heldout_batch_stats'] for e in shared], scratch),
          'calibrated': kendall([e['heldout_calibrated'] for e in shared], scratch)}


def compare_runs(base_workdir: str, variants: Mapping[str, str]) -> list[dict[str, Any]]:
  """One row per experiment workdir (the base first, then each named variant): the first seed's
  supernet max-network held-out accuracy, AutoSlim and uniform test accuracy per target, and the
  estimator's taus over the base study's configs. Rows for ``plots.ablation_table``."""
  base_report = files.read_json(os.path.join(base_workdir, ESTIMATOR_DIR, ESTIMATOR_FILE))
  seed = base_report['seed']
  rows = []
  for name, workdir in {'base': base_workdir, **variants}.items():
    summary = files.read_json(os.path.join(workdir, SUMMARY_FILE))
    if seed not in summary['seeds']:
      raise ValueError(f'{workdir} has no run of seed {seed} (seeds {summary["seeds"]}): '
                       f'compare runs of the base study\'s seed')
    index = summary['seeds'].index(seed)
    report_path = os.path.join(workdir, ESTIMATOR_DIR, ESTIMATOR_FILE)
    # The max network's held-out accuracy in the supernet: how well the supernet trained.
    first_step = search.read_trajectory(os.path.join(seed_workdir(workdir, seed), 'search'))[0]
    rows.append({
        'name': name, 'seed': seed, 'supernet_max_heldout': first_step['heldout_accuracy'],
        'targets': [{'name': t['name'],
                     'autoslim': t['autoslim']['test_accuracy']['values'][index],
                     'uniform': t['uniform']['test_accuracy']['values'][index],
                     'difference': t['difference']['values'][index]}
                    for t in summary['targets']],
        'taus': (shared_config_taus(base_report, files.read_json(report_path))
                 if files.exists(report_path) else None)})
  return rows


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
  files.write_atomic(os.path.join(workdir, 'summary.md'), plots.summary_table(summary).encode())
  plots.plot_seeds(summary, os.path.join(workdir, 'accuracy_vs_macs.png'))
  files.write_atomic(os.path.join(workdir, SUMMARY_FILE), json.dumps(summary, indent=1).encode())


def run(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
        num_path: int = 3, num_random: int = 3, overwrite: bool = False,
        reference: str | None = None) -> dict[str, Any]:
  """Every seed's pipeline, the summary, then the estimator study on the first seed (with the
  configs of the ``reference`` study's estimator.json, when given)."""
  check_experiment(config, seeds)
  reference_report = None
  if reference is not None:
    if not files.exists(reference):
      raise ValueError(f'--estimator_reference={reference}: no such file (give the '
                       f'{ESTIMATOR_DIR}/{ESTIMATOR_FILE} of an earlier experiment)')
    reference_report = files.read_json(reference)
    reference_entries(with_seed(config, seeds[0]), reference_report)  # refuse before training
  started = time.time()
  results, seconds = run_seeds(config, workdir, seeds, overwrite)
  summary = summarize_seeds(results)
  summary['runs'] = previous_runs(workdir)
  run_record = {**environment(), 'started': time.strftime('%Y-%m-%d %H:%M:%S %Z',
                                                           time.localtime(started)),
                'seed_seconds': {str(s): round(v, 1) for s, v in seconds.items()}}
  summary['runs'].append(run_record)
  write_summary(workdir, summary)
  if num_path + num_random > 0 or reference_report is not None:
    start = time.perf_counter()
    report = estimator_quality(config, workdir, seeds[0], num_path, num_random,
                               reference_report)
    run_record['estimator_seconds'] = round(time.perf_counter() - start, 1)
    summary['estimator'] = {'kendall_tau': report['kendall_tau'],
                            'configs': len(report['configs']),
                            'report': os.path.join(workdir, ESTIMATOR_DIR, ESTIMATOR_FILE)}
  run_record['seconds'] = round(time.time() - started, 1)
  write_summary(workdir, summary)
  return summary


def previous_runs(workdir: str) -> list[dict[str, Any]]:
  """The run records of earlier calls in ``workdir`` (a resumed experiment keeps them all)."""
  path = os.path.join(workdir, SUMMARY_FILE)
  return list(files.read_json(path).get('runs', [])) if files.exists(path) else []


# --config, --workdir, --overwrite and the multi-host flags are the pipeline command's.
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the pipeline runs (config.seed); '
                           'the experiment workdir holds one workdir per seed, seed_<s>.')
_NPZ = flags.DEFINE_string('npz', None, 'Train on this .npz (x_train, y_train, x_test, y_test): '
                           'sets config.dataset.name=npz and config.dataset.path.')
_PATH = flags.DEFINE_integer('estimator_path', 3, 'Configs of the greedy path in the estimator '
                             'study (besides the searched and uniform nets).')
_RANDOM = flags.DEFINE_integer('estimator_random', 3, 'Random configs in the estimator study. '
                               'With --estimator_path=0 too, no estimator study.')
_REFERENCE = flags.DEFINE_string(
    'estimator_reference', None, 'An earlier experiment\'s estimator/estimator.json: score its '
    'configs with this run\'s supernet and reuse their from-scratch accuracies (an ablation of '
    'the supernet or the search; same seed, data and retrain recipe), instead of new path and '
    'random configs.')


def main(argv):
  config, workdir = main_lib.FLAGS.config, main_lib.WORKDIR.value
  # Before start(): XLA reads its flags when the backend starts, which start() does.
  main_lib.run_reporting_errors(lambda: compilation.set_gpu_autotune_level(
      config.compilation.gpu_autotune_level))
  main_lib.start(argv)
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise app.UsageError(f'--seeds must be integers, e.g. 0,1,2; got {_SEEDS.value}') from None
  if _NPZ.value is not None:
    config.dataset.name = 'npz'
    config.dataset.path = os.path.abspath(_NPZ.value)
  summary = main_lib.run_reporting_errors(lambda: run(
      config, workdir, seeds, _PATH.value, _RANDOM.value, main_lib.OVERWRITE.value,
      _REFERENCE.value))
  if parallel.is_main_process():
    print()
    print(plots.summary_table(summary))
    if 'estimator' in summary:
      print(files.read_text(os.path.join(workdir, ESTIMATOR_DIR, 'estimator.md')))
    print(f'summary: {os.path.join(workdir, SUMMARY_FILE)}, {os.path.join(workdir, "summary.md")}'
          f'; per-seed runs: {seed_workdir(workdir, seeds[0])}, ...')


if __name__ == '__main__':
  app.run(main, flags_parser=main_lib.parse_flags)
