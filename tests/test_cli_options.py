"""Command-line options no other test runs: the experiment's --npz (README's CIFAR command),
--overwrite on an existing workdir, and profile on a published network and on an exported
model.json. The experiment runs once, tiny, and the other checks reuse its workdir."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from autoslim_jax import published
from conftest import run

# README's CIFAR command (configs/cifar10_sample_cpu.py: 32x32x3 images; its model_kwargs have no
# image_size to override) at a size a test affords: the CIFAR MobileNet v1 at 0.35x, 2 supernet
# and 2 retraining steps, one target.
TINY = ('--config.model=mobilenet_v1', '--config.model_kwargs.width_mult=0.35',
        '--config.groups=5', '--config.min_width=0.07',
        '--config.dataset.heldout_size=32', '--config.supernet.batch_size=32',
        '--config.supernet.num_epochs=2', '--config.supernet.num_sandwich=2',
        '--config.supernet.eval_batch_size=32', '--config.search.batch_size=32',
        '--config.search.num_images=32', '--config.search.targets.macs_of_width=(0.3,)',
        '--config.calibration.num_images=32', '--config.calibration.batch_size=16',
        '--config.retrain.batch_size=32', '--config.retrain.num_epochs=2',
        '--config.retrain.eval_batch_size=16')
CONFIG = '--config=configs/cifar10_sample_cpu.py'


@pytest.fixture(scope='module')
def npz_experiment(tmp_path_factory):
  """python -m autoslim_jax.experiment --config=configs/cifar10_sample_cpu.py --npz=FILE, one
  seed, no estimator study: (workdir, npz path, the command's result). The file holds 80
  training and 16 test images (32x32x3), counts no other data set has."""
  root = tmp_path_factory.mktemp('npz_experiment')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, 32, 32, 3)).astype(np.uint8)
  labels = np.arange(96) % 10
  npz = root / 'arrays.npz'
  np.savez(npz, x_train=images[:80], y_train=labels[:80], x_test=images[80:], y_test=labels[80:])
  workdir = root / 'experiment'
  result = run('autoslim_jax.experiment', CONFIG, f'--workdir={workdir}', f'--npz={npz}',
               '--seeds=0', '--estimator_path=0', '--estimator_random=0', *TINY)
  return workdir, str(npz), result


def test_experiment_trains_on_the_npz_flag_file(npz_experiment):
  workdir, npz, result = npz_experiment
  config = json.loads((workdir / 'seed_0' / 'config.json').read_text())
  assert config['dataset']['name'] == 'npz' and config['dataset']['path'] == npz
  results = json.loads((workdir / 'seed_0' / 'results.json').read_text())
  assert results['dataset'] == f'npz:{npz}'
  assert results['test_images'] == 16 and results['calibration_images'] == 32
  (target,) = results['targets']
  assert target['name'] == 'macs_0.3x'
  assert 0 <= target['autoslim']['test_accuracy'] <= 1
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['seeds'] == [0]
  assert summary['targets'][0]['autoslim']['test_accuracy']['values'] == [
      target['autoslim']['test_accuracy']]
  assert '| macs_0.3x |' in result.stdout


def test_overwrite_replaces_the_outputs_of_another_config(npz_experiment, tmp_path):
  """README (Failure and recovery): a rerun with another config is refused, naming the changed
  keys, and leaves the workdir alone; with --overwrite it deletes the old outputs and starts
  again. Here on a copy of the experiment's seed, with another log period, supernet only."""
  source, npz, _ = npz_experiment
  workdir = tmp_path / 'w'
  shutil.copytree(source / 'seed_0', workdir)
  before = sorted(os.listdir(workdir))
  assert {'results.json', 'search', 'retrain', 'export', 'supernet'} <= set(before)
  args = ('autoslim_jax.main', CONFIG, f'--workdir={workdir}', f'--config.dataset.path={npz}',
          *TINY, '--config.supernet.log_every_steps=1', '--config.stages=supernet')

  refused = run(*args, check=False)
  assert refused.returncode == 2
  assert ('holds the outputs of another config (supernet.log_every_steps: 25 there, 1 now); use '
          'a new --workdir, or --overwrite' in refused.stderr)
  assert sorted(os.listdir(workdir)) == before

  replaced = run(*args, '--overwrite')
  assert '--overwrite: deleting the outputs' in replaced.stderr
  assert 'supernet: 2 steps' in replaced.stderr and 'from step 0' in replaced.stderr
  assert sorted(os.listdir(workdir)) == ['compilation.json', 'config.json', 'supernet']
  assert json.loads((workdir / 'config.json').read_text())['supernet']['log_every_steps'] == 1
  # The old run's TensorBoard file is gone with it: one event file, logging every step.
  assert len(list((workdir / 'supernet').glob('events*'))) == 1
  assert sorted(os.listdir(workdir / 'supernet' / 'checkpoints')) == ['2']


def _table_number(table, name):
  """The exact count in a profile table line, e.g. 'MACs  1.23 M  (1,234,567)'."""
  return int(re.search(rf'^{name}\s.*\(([\d,]+)', table, re.M).group(1).replace(',', ''))


def test_profile_of_an_exported_model_json(npz_experiment):
  """profile --channels=model.json (README: an exported model.json's channels are read) prints
  the exported network's MACs and params, as its model.json and results.json record them."""
  workdir, _, _ = npz_experiment
  (target,) = json.loads((workdir / 'seed_0' / 'results.json').read_text())['targets']
  exported = os.path.join(target['autoslim']['export'], 'model.json')
  description = json.loads(open(exported).read())
  table = run('autoslim_jax.profile', '--model=mobilenet_v1', '--layout=cifar',
              '--max_width=0.35', f'--channels={exported}').stdout
  assert 'mobilenet_v1 (cifar layout, 32x32x3, 10 classes), channel config' in table
  for name, key in (('MACs', 'macs'), ('params', 'params'), ('memory', 'memory')):
    assert _table_number(table, name) == description['resources'][key] == target['autoslim'][key]
  assert description['channels'] == target['autoslim']['channels']


def test_profile_of_a_published_network():
  """README's command, python -m autoslim_jax.profile --model=resnet50 --published=2G
  --per_layer: the paper's MACs and params of AutoSlim-ResNet-50 2G, its channel list, and
  per-layer MACs that add up to the total."""
  net = published.get('resnet50', '2G')
  table = run('autoslim_jax.profile', '--model=resnet50', '--published=2G', '--per_layer').stdout
  macs, params = _table_number(table, 'MACs'), _table_number(table, 'params')
  assert macs == pytest.approx(net.published_macs * 1e6, rel=1e-3)
  assert params == pytest.approx(net.published_params * 1e6, rel=1e-2)
  assert f'channel_num_list {json.dumps(list(net.channel_num_list))}' in table
  layer_rows = re.findall(r'^\S+\s+(?:conv|depthwise|dense)\s+\d+\s+\d+\s+([\d,]+)\s', table, re.M)
  assert len(layer_rows) == 54  # 53 convs (stem, 16 blocks of 3, 4 shortcuts) and the classifier
  assert sum(int(r.replace(',', '')) for r in layer_rows) == macs
