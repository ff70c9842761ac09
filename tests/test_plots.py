"""Figures and the results table from small synthetic, schema-correct search results."""

from __future__ import annotations

import matplotlib.image
import pytest

from autoslim_jax import plots

UNITS = ['stem', 'block1', 'head']
MAX_CHANNELS = {'stem': 32, 'block1': 64, 'head': 128}
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _step(step, unit, channels, accuracy, macs):
  return {'step': step, 'unit': unit, 'channels': dict(channels), 'heldout_accuracy': accuracy,
          'heldout_loss': 1.0 - accuracy, 'macs': macs, 'params': macs // 20,
          'memory': macs // 10, 'latency_ms': None if step == 0 else 0.01 * step,
          'candidates': 3, 'seconds': 1.5}


@pytest.fixture(name='trajectory')
def trajectory_fixture():
  return [_step(0, None, MAX_CHANNELS, 0.90, 300_000_000),
          _step(1, 'head', {'stem': 32, 'block1': 64, 'head': 96}, 0.89, 250_000_000),
          _step(2, 'block1', {'stem': 32, 'block1': 48, 'head': 96}, 0.87, 190_000_000),
          _step(3, 'stem', {'stem': 16, 'block1': 48, 'head': 96}, 0.84, 80_000_000)]


@pytest.fixture(name='targets')
def targets_fixture(trajectory):
  def target(name, metric, value, step):
    record = trajectory[step]
    return {'name': name, 'metric': metric, 'value': value, 'step': step,
            'channels': record['channels'], 'macs': record['macs'], 'params': record['params'],
            'memory': record['memory'], 'latency_ms': record['latency_ms'],
            'heldout_accuracy': record['heldout_accuracy']}
  return [target('macs_200M', 'macs', 200e6, 2), target('latency_ms_0.02', 'latency_ms', 0.02, 2)]


def _net(channels, accuracy, macs, **extra):
  return {'channels': dict(channels), 'macs': macs, 'params': macs // 20, 'memory': macs // 10,
          'test_accuracy': accuracy, **extra}


@pytest.fixture(name='results')
def results_fixture():
  return {
      'model': 'mobilenet_v2', 'dataset': 'cifar10', 'units': UNITS,
      'max': {'channels': MAX_CHANNELS, 'macs': 300_000_000, 'params': 15_000_000,
              'memory': 30_000_000},
      'targets': [
          {'name': 'macs_200M', 'metric': 'macs', 'value': 200e6,
           'autoslim': _net({'stem': 32, 'block1': 48, 'head': 96}, 0.8812, 190_000_000,
                            latency_ms=None, heldout_accuracy=0.87,
                            supernet_test_accuracy=0.86),
           'uniform': _net({'stem': 24, 'block1': 48, 'head': 96}, 0.8689, 195_000_000,
                           width_mult=0.75),
           'difference': 0.8812 - 0.8689},
          {'name': 'macs_80M', 'metric': 'macs', 'value': 80e6,
           'autoslim': _net({'stem': 16, 'block1': 48, 'head': 96}, None, 80_000_000,
                            latency_ms=None, heldout_accuracy=0.84, supernet_test_accuracy=None),
           'uniform': _net({'stem': 16, 'block1': 32, 'head': 64}, 0.8, 75_500_000,
                           width_mult=0.5),
           'difference': None}]}


def _assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[1] > 100


def test_plot_trajectory(tmp_path, trajectory, targets):
  path = plots.plot_trajectory(trajectory, targets, tmp_path / 'new' / 'trajectory.png', 'test')
  assert path == str(tmp_path / 'new' / 'trajectory.png')
  _assert_png(path)


def test_plot_accuracy_vs_macs(tmp_path, results):
  _assert_png(plots.plot_accuracy_vs_macs(results, tmp_path / 'accuracy.png'))


def test_plot_accuracy_vs_macs_without_test_accuracies(tmp_path, results):
  for target in results['targets']:
    target['autoslim']['test_accuracy'] = target['uniform']['test_accuracy'] = None
  _assert_png(plots.plot_accuracy_vs_macs(results, tmp_path / 'heldout.png'))


def test_plot_channels(tmp_path, results):
  _assert_png(plots.plot_channels(results, 'macs_80M', tmp_path / 'channels.png'))
  with pytest.raises(KeyError, match='macs_1M'):
    plots.plot_channels(results, 'macs_1M', tmp_path / 'missing.png')


def test_plot_all_channels(tmp_path, results):
  paths = plots.plot_all_channels(results, tmp_path / 'figures')
  assert paths == [str(tmp_path / 'figures' / 'channels_macs_200M.png'),
                   str(tmp_path / 'figures' / 'channels_macs_80M.png')]
  for path in paths:
    _assert_png(path)


def test_results_table(results):
  lines = plots.results_table(results).splitlines()
  assert lines[0] == ('| target | MACs (M) | params (M) | memory (M) | AutoSlim test acc (%) | '
                      'uniform width | uniform MACs (M) | uniform test acc (%) | '
                      'difference (points) |')
  assert lines[1].startswith('|---|')
  assert len(lines) == 4
  assert lines[2] == '| macs_200M | 190.0 | 9.500 | 19.00 | 88.12 | 0.75 | 195.0 | 86.89 | +1.23 |'
  assert lines[3] == '| macs_80M | 80.00 | 4.000 | 8.00 | - | 0.5 | 75.50 | 80.00 | - |'
