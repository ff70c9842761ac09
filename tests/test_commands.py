"""The command-line entry points, run as a user runs them."""

import json
import os

import numpy as np
import pytest

from conftest import REPO, run

from autoslim_jax import export

LIST_305 = ('[8,8,96,16,96,16,96,24,144,24,144,24,144,56,288,56,288,56,288,56,288,96,432,96,432,'
            '96,864,240,1440,240,960,240,1440,480,1920,1000]')


def profile_json(*args):
  return json.loads(run('autoslim_jax.profile', '--json', *args).stdout)


def test_profile_published_list_inline_and_from_files(tmp_path):
  result = profile_json('--model=mobilenet_v2', f'--channels={LIST_305}')
  assert abs(result['macs'] / 305.1e6 - 1) < 1e-3
  assert abs(result['params'] / 5.77e6 - 1) < 1e-2
  list_file = tmp_path / 'list.json'
  list_file.write_text(LIST_305)
  assert profile_json(f'--channels={list_file}')['macs'] == result['macs']
  # the unit -> channels JSON form, as search results and exports write it
  config_file = tmp_path / 'config.json'
  config_file.write_text(json.dumps(result['channels']))
  assert profile_json(f'--channels={config_file}')['macs'] == result['macs']


def test_profile_uniform_widths_and_table():
  assert abs(profile_json('--width=1.0')['macs'] / 300.8e6 - 1) < 1e-3
  cifar = profile_json('--layout=cifar', '--width=0.75')
  assert abs(cifar['macs'] / 59.31e6 - 1) < 1e-3 and cifar['input_shape'] == [32, 32, 3]
  table = run('autoslim_jax.profile', '--layout=cifar', '--width=1.0', '--per_layer').stdout
  assert 'MACs          87.98 M' in table
  assert 'block16/project' in table


@pytest.mark.parametrize('channels,message', [
    (LIST_305.replace(',1000]', ']'), 'has 35 entries; this network takes 36'),
    (LIST_305.replace('1920', '3840'), "entry 34 (unit 'last'): channel count 3840 is out of "
                                       'range; valid is 1..1920'),
    (LIST_305.replace('[8,8,', '[0,8,'), "entry 0 (unit 'stem'): channel count 0 is out of range; "
                                         'valid is 1..48'),
    (LIST_305.replace('[8,8,', '[8,8.5,'), "entry 1 (unit 'stage1'): channel count 8.5 is not an "
                                           'integer; valid is an integer in 1..24'),
    ('[8, 8', 'neither a file nor JSON'),
])
def test_profile_refuses_malformed_lists(channels, message):
  result = run('autoslim_jax.profile', f'--channels={channels}', check=False)
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


# Two sandwich members (max and min) halve the supernet step's compile time.
SHORT_QUICKSTART = ('--config=configs/quickstart.py', '--config.supernet.num_epochs=0.25',
                    '--config.supernet.num_sandwich=2',
                    '--config.search.targets.macs_of_width=(0.45,)',
                    '--config.retrain.num_epochs=0.25')


def test_main_quickstart_stages_then_resume(tmp_path):
  """The whole pipeline, shortened (5 supernet steps, a target close to the max, 5 retraining
  steps): first restricted to supernet and search, then the rest, then a rerun that only reads."""
  workdir = tmp_path / 'quick'
  first = run('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}',
              '--config.stages=supernet,search')
  assert os.listdir(workdir / 'supernet' / 'checkpoints') == ['5']
  assert (workdir / 'search' / 'search.json').exists()
  assert not (workdir / 'retrain').exists() and not (workdir / 'results.json').exists()
  assert 'search step 1:' in first.stderr

  run('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}')
  results = json.loads((workdir / 'results.json').read_text())
  (target,) = results['targets']
  assert target['name'] == 'macs_0.45x' and target['metric'] == 'macs'
  for family in ('autoslim', 'uniform'):
    entry = target[family]
    assert entry['macs'] <= target['value']
    for key in ('channels', 'macs', 'params', 'memory', 'test_accuracy'):
      assert entry[key] is not None, (family, key)
    module, variables, description = export.load_slim(entry['export'])
    assert description['channels'] == entry['channels']
    logits = module.apply(variables, np.zeros((2, 8, 8, 1), np.float32), train=False)
    assert logits.shape == (2, 10)
  assert 0 < target['uniform']['width_mult'] <= 0.45
  assert target['difference'] == pytest.approx(
      target['autoslim']['test_accuracy'] - target['uniform']['test_accuracy'])
  assert 'macs_0.45x' in (workdir / 'results.md').read_text()
  for plot in ('search_trajectory.png', 'accuracy_vs_macs.png', 'channels_macs_0.45x.png'):
    assert (workdir / 'plots' / plot).stat().st_size > 1000

  rerun = run('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}')
  assert 'supernet: training complete' in rerun.stderr
  assert 'stage search: complete' in rerun.stderr
  assert 'retrain macs_0.45x autoslim: training complete' in rerun.stderr
  assert 'stage export: complete' in rerun.stderr
  assert '| macs_0.45x |' in rerun.stdout


def test_main_refuses_a_stage_whose_inputs_are_missing(tmp_path):
  result = run('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={tmp_path}',
               '--config.stages=search', check=False)
  assert result.returncode == 2
  assert 'supernet: training is not complete' in result.stderr
  assert 'run its stage first' in result.stderr


def test_main_refuses_unknown_model(tmp_path):
  result = run('autoslim_jax.main', '--config=configs/quickstart.py',
               '--config.model=mobilenet_v9', f'--workdir={tmp_path}', check=False)
  assert result.returncode == 2
  assert "unknown model 'mobilenet_v9'" in result.stderr


def test_readme_python_examples_run():
  with open(os.path.join(REPO, 'README.md')) as f:
    blocks = [part.split('```', 1)[0] for part in f.read().split('```python\n')[1:]]
  assert len(blocks) >= 3
  for code in blocks:  # the own-network file only defines; test_zoo.py runs it
    exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
