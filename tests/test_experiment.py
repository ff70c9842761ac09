"""The experiment's pieces that need no training: seeds, summaries, config picks, Kendall's tau,
tables and plots. The command itself runs in tests/test_commands.py."""

import json

import numpy as np
import pytest

from autoslim_jax import defaults
from autoslim_jax import experiment
from autoslim_jax import plots
from autoslim_jax import resources
from autoslim_jax import search


def fake_results(seed, autoslim_accuracies, uniform_accuracies):
  """results.json of one seed with one target per accuracy pair (the pipeline's schema)."""
  targets = []
  for i, (a, u) in enumerate(zip(autoslim_accuracies, uniform_accuracies)):
    macs = 1e6 * (10 - i) + seed  # the searched net's MACs differ a little from seed to seed
    targets.append({
        'name': f'macs_{i}', 'metric': 'macs', 'value': 1e6 * (10 - i),
        'autoslim': {'channels': {'stem': 8 + seed}, 'macs': macs, 'params': 2e5, 'memory': 3e5,
                     'heldout_accuracy': 0.5, 'supernet_test_accuracy': 0.4,
                     'test_accuracy': a},
        'uniform': {'width_mult': 0.3, 'channels': {'stem': 8}, 'macs': 9.9e6 - 1e6 * i,
                    'params': 2e5, 'memory': 3e5, 'test_accuracy': u},
        'difference': a - u})
  return {'model': 'mobilenet_v2', 'model_kwargs': {}, 'dataset': 'digits', 'test_images': 297,
          'retrain': {'mode': 'individual'}, 'max': {'macs': 2e7}, 'targets': targets}


def test_summary_gives_mean_and_sample_std_over_seeds(tmp_path):
  by_seed = {0: fake_results(0, [0.90, 0.80], [0.85, 0.82]),
             1: fake_results(1, [0.92, 0.78], [0.86, 0.80]),
             2: fake_results(2, [0.94, 0.76], [0.84, 0.81])}
  summary = experiment.summarize_seeds(by_seed)
  assert summary['seeds'] == [0, 1, 2]
  first, second = summary['targets']
  assert first['autoslim']['test_accuracy']['mean'] == pytest.approx(0.92)
  assert first['autoslim']['test_accuracy']['std'] == pytest.approx(0.02)  # ddof=1
  assert first['uniform']['test_accuracy']['values'] == [0.85, 0.86, 0.84]
  assert first['difference']['mean'] == pytest.approx(0.07)
  assert first['autoslim']['macs']['values'] == [10e6, 10e6 + 1, 10e6 + 2]
  assert first['autoslim_better'] == 3 and second['autoslim_better'] == 0
  assert first['channels'] == {'0': {'stem': 8}, '1': {'stem': 9}, '2': {'stem': 10}}

  table = plots.summary_table(summary)
  assert '| macs_0 | 10.00 | 0.200 | 0.30 | 92.00 ± 2.00 | 0.3000 |' in table
  assert '| +7.00 ± 2.65 | 3 of 3 |' in table
  assert '| -3.00 ± 1.73 | 0 of 3 |' in table
  path = plots.plot_seeds(summary, str(tmp_path / 'accuracy_vs_macs.png'))
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_summary_gives_the_paired_difference_with_its_confidence_interval():
  # AutoSlim beats uniform by 1, 2 and 3 points in seeds 0, 1 and 2; in a second target by 2,
  # 2.5 and 3 points.
  by_seed = {s: fake_results(s, [0.50 + 0.01 * (s + 1), 0.52 + 0.005 * s], [0.50, 0.50])
             for s in (0, 1, 2)}
  summary = experiment.summarize_seeds(by_seed)
  first, second = summary['targets']
  difference = first['difference']
  assert difference['values'] == pytest.approx([0.01, 0.02, 0.03])
  assert difference['seeds'] == [0, 1, 2] and difference['confidence'] == 0.95
  assert difference['mean'] == pytest.approx(0.02) and difference['std'] == pytest.approx(0.01)
  half = 4.302653 * 0.01 / np.sqrt(3)  # t(0.975) with 2 degrees of freedom, times std/sqrt(n)
  assert difference['ci'] == pytest.approx([0.02 - half, 0.02 + half], rel=1e-6)
  assert second['difference']['ci'] == pytest.approx(
      [0.025 - 4.302653 * 0.005 / np.sqrt(3), 0.025 + 4.302653 * 0.005 / np.sqrt(3)], rel=1e-6)
  assert json.loads(json.dumps(summary))['targets'][0]['difference']['ci'] == pytest.approx(
      [0.02 - half, 0.02 + half], rel=1e-6)
  table = plots.summary_table(summary)
  assert table.splitlines()[0].endswith('| AutoSlim better | difference, 95% CI (points) |')
  # 3 wins of 3, yet the first interval holds 0 (three seeds are few); the second excludes it.
  assert table.splitlines()[2].endswith('| +2.00 ± 1.00 | 3 of 3 | +2.00 [-0.48, +4.48] |')
  assert table.splitlines()[3].endswith('| +2.50 ± 0.50 | 3 of 3 | +2.50 [+1.26, +3.74] |')
  assert "Student's t with n - 1 degrees of freedom" in table

  # Seeds with 1, 2 and 3 points but a seed without a uniform net: paired over the others.
  by_seed[1]['targets'][0]['uniform'] = None
  by_seed[1]['targets'][0]['difference'] = None
  difference = experiment.summarize_seeds(by_seed)['targets'][0]['difference']
  assert difference['seeds'] == [0, 2] and difference['values'] == pytest.approx([0.01, 0.03])


def test_one_seed_has_no_confidence_interval():
  summary = experiment.summarize_seeds({4: fake_results(4, [0.62], [0.60])})
  difference = summary['targets'][0]['difference']
  assert difference['mean'] == pytest.approx(0.02) and difference['std'] == 0.0
  assert difference['ci'] is None
  assert '"ci": null' in json.dumps(summary)
  assert plots.summary_table(summary).splitlines()[2].endswith('| +2.00 ± 0.00 | 1 of 1 | - |')
  assert experiment.paired_difference({0: None, 1: None}) is None


def test_summary_refuses_seeds_with_different_targets():
  other = fake_results(1, [0.9], [0.8])
  with pytest.raises(ValueError, match='seeds ran different configs'):
    experiment.summarize_seeds({0: fake_results(0, [0.9, 0.8], [0.8, 0.7]), 1: other})


def test_one_seed_has_zero_spread():
  assert experiment.mean_std([0.5]) == {'mean': 0.5, 'std': 0.0, 'values': [0.5]}
  assert experiment.mean_std([None, None]) is None


def test_with_seed_copies_the_config():
  config = defaults.get_default_config()
  config.lock()
  seeded = experiment.with_seed(config, 7)
  assert seeded.seed == 7 and config.seed == 0
  assert seeded.supernet.batch_size == config.supernet.batch_size


def test_experiment_refuses_what_it_cannot_compare():
  config = defaults.get_default_config()
  with pytest.raises(ValueError, match='distinct'):
    experiment.check_experiment(config, [0, 0])
  config.stages = 'supernet,search'
  with pytest.raises(ValueError, match='runs every stage'):
    experiment.check_experiment(config, [0])
  config.stages = defaults.get_default_config().stages
  config.retrain.mode = 'joint'
  with pytest.raises(ValueError, match='individual'):
    experiment.check_experiment(config, [0])
  config.retrain.mode = 'individual'
  config.retrain.uniform_baseline = False
  with pytest.raises(ValueError, match='uniform_baseline'):
    experiment.check_experiment(config, [0])


def test_random_configs_spread_over_the_macs_range(tiny_network):
  space = tiny_network.channel_space(6, 1 / 6)
  macs_of = lambda c: resources.ResourceModel(tiny_network)(c)['macs']
  low, high = macs_of(space.min_config()), macs_of(space.max_config())
  configs = experiment.random_configs(tiny_network, space, low, high, 5, seed=0)
  assert len(configs) == 5
  macs = sorted(macs_of(c) for c in configs)
  edges = np.linspace(low, high, 6)
  # one config in each fifth of the range, every one on the supernet's grid
  assert [int(np.searchsorted(edges, m, side='right')) - 1 for m in macs] == [0, 1, 2, 3, 4]
  assert all(space.is_on_grid(c) for c in configs)
  assert configs == experiment.random_configs(tiny_network, space, low, high, 5, seed=0)


def test_path_configs_are_evenly_spaced_in_macs():
  trajectory = [{'macs': m, 'channels': {'u': m}} for m in range(100, -1, -5)]
  picked = experiment.path_configs(trajectory, 3)
  assert [c['u'] for c in picked] == [75, 50, 25]


def test_kendall_tau():
  assert experiment.kendall([1, 2, 3, 4], [10, 20, 30, 40])['tau'] == pytest.approx(1.0)
  assert experiment.kendall([1, 2, 3, 4], [40, 30, 20, 10])['tau'] == pytest.approx(-1.0)
  assert experiment.kendall([1, 2, 3], [1, 3, 2])['tau'] == pytest.approx(1 / 3)
  undefined = experiment.kendall([1, 1, 1], [1, 2, 3])
  assert undefined == {'tau': None, 'p_value': None}  # a constant ranking: no NaN in the JSON


def test_estimator_table_and_plot(tmp_path):
  configs = [{'name': f'c{i}', 'kind': kind, 'macs': 1e6 * (i + 1),
              'heldout_batch_stats': 0.5 + 0.05 * i, 'heldout_calibrated': 0.45 + 0.05 * i,
              'scratch_test_accuracy': 0.6 + 0.04 * i}
             for i, kind in enumerate(['autoslim', 'uniform', 'path', 'random'])]
  report = {'configs': configs, 'kendall_tau': {
      'batch_stats': experiment.kendall([c['heldout_batch_stats'] for c in configs],
                                        [c['scratch_test_accuracy'] for c in configs]),
      'calibrated': {'tau': None, 'p_value': None},
      'macs': experiment.kendall([c['macs'] for c in configs],
                                 [c['scratch_test_accuracy'] for c in configs])}}
  table = plots.estimator_table(report)
  assert table.splitlines()[2] == '| c3 | random | 4.00 | 65.00 | 60.00 | 72.00 |'
  assert 'supernet, batch statistics +1.000' in table
  assert 'supernet, calibrated BatchNorm undefined' in table
  path = plots.plot_estimator(report, str(tmp_path / 'estimator.png'))
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_reference_study_reused_only_with_the_same_from_scratch_recipe():
  config = experiment.with_seed(defaults.get_default_config(), 0)
  configs = [{'name': 'macs_1x_autoslim', 'kind': 'autoslim', 'channels': {'stem': 16},
              'scratch_test_accuracy': 0.7},
             {'name': 'random_0', 'kind': 'random', 'channels': {'stem': 8},
              'scratch_test_accuracy': 0.6}]
  reference = {'scratch_recipe': experiment.scratch_recipe(config), 'configs': configs}
  # Another supernet or search (the ablation) keeps the from-scratch accuracies valid.
  config.supernet.num_epochs = 3 * config.supernet.num_epochs
  config.search.score = 'loss'
  entries = experiment.reference_entries(config, reference)
  assert [(e['name'], e['kind'], e['scratch_test_accuracy']) for e in entries] == [
      ('reference_macs_1x_autoslim', 'reference', 0.7), ('reference_random_0', 'random', 0.6)]
  config.retrain.num_epochs = 1.0
  with pytest.raises(ValueError, match=r'another recipe \(retrain.num_epochs: 300.0 there, 1.0 '
                                       r'now\): its accuracies do not apply'):
    experiment.reference_entries(config, reference)
  with pytest.raises(ValueError, match=r'another recipe \(seed: 0 there, 1 now'):
    experiment.reference_entries(experiment.with_seed(defaults.get_default_config(), 1), reference)
  with pytest.raises(ValueError, match='records no scratch_recipe'):
    experiment.reference_entries(config, {'configs': configs})


def test_compare_runs_of_an_ablation(tmp_path):
  def experiment_dir(name, accuracies, scratch_by_stem, scores):
    directory = tmp_path / name
    (directory / 'estimator').mkdir(parents=True)
    summary = experiment.summarize_seeds({0: fake_results(0, *accuracies),
                                          1: fake_results(1, *accuracies)})
    (directory / 'summary.json').write_text(json.dumps(summary))
    configs = [{'name': f's{stem}', 'kind': 'random', 'channels': {'stem': stem},
                'scratch_test_accuracy': scratch, 'heldout_batch_stats': score,
                'heldout_calibrated': -score}
               for (stem, scratch), score in zip(scratch_by_stem.items(), scores)]
    (directory / 'estimator' / 'estimator.json').write_text(json.dumps(
        {'seed': 0, 'configs': configs}))
    (directory / 'seed_0' / 'search').mkdir(parents=True)
    search.write_trajectory(str(directory / 'seed_0' / 'search'),
                            [{'step': 0, 'heldout_accuracy': accuracies[0][0] / 2}])
    return str(directory)

  base = experiment_dir('base', ([0.9, 0.8], [0.85, 0.82]), {8: 0.5, 12: 0.6, 16: 0.7},
                        [0.1, 0.3, 0.2])
  # The variant's study adds its own searched net (stem 20): not in the base, not in its taus.
  variant = experiment_dir('long', ([0.95, 0.84], [0.85, 0.82]),
                           {8: 0.5, 12: 0.6, 16: 0.7, 20: 0.1}, [0.1, 0.2, 0.3, 0.9])
  rows = experiment.compare_runs(base, {'long supernet': variant})
  assert [r['name'] for r in rows] == ['base', 'long supernet']
  assert rows[1]['targets'][0]['difference'] == pytest.approx(0.10)
  assert rows[0]['taus']['batch_stats']['tau'] == pytest.approx(1 / 3)
  assert rows[1]['taus']['configs'] == 3 and rows[1]['taus']['batch_stats']['tau'] == 1.0
  table = plots.ablation_table(rows)
  assert table.splitlines()[3].startswith('| long supernet | 47.50 | 95.00, +10.00 | 84.00, +2.00 | '
                                          '+1.000 (p = ')
  assert table.splitlines()[3].endswith('| -1.000 (p = 0.33) | 3 |')


def test_experiment_refuses_a_reference_of_another_recipe_before_training(tmp_path):
  config = experiment.with_seed(defaults.get_default_config(), 0)
  reference = tmp_path / 'estimator.json'
  reference.write_text(json.dumps({'scratch_recipe': experiment.scratch_recipe(config),
                                   'configs': []}))
  config.retrain.label_smoothing = 0.2
  with pytest.raises(ValueError, match=r'another recipe \(retrain.label_smoothing: 0.1 there, '
                                       r'0.2 now\): its accuracies do not apply'):
    experiment.run(config, str(tmp_path / 'w'), [0], reference=str(reference))
  with pytest.raises(ValueError, match='--estimator_reference=.*missing.json: no such file'):
    experiment.run(config, str(tmp_path / 'w'), [0], reference=str(tmp_path / 'missing.json'))
  assert not (tmp_path / 'w').exists()  # refused before anything was written
