"""The command-line entry points, run as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

LIST_305 = ('[8,8,96,16,96,16,96,24,144,24,144,24,144,56,288,56,288,56,288,56,288,96,432,96,432,'
            '96,864,240,1440,240,960,240,1440,480,1920,1000]')


def run(*args, check=True):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


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


def test_main_quickstart(tmp_path):
  workdir = tmp_path / 'quick'
  # A shortened schedule (5 steps): the full quickstart takes ~3 minutes on 2 cores.
  result = run('autoslim_jax.main', '--config=configs/quickstart.py', f'--workdir={workdir}',
               '--config.supernet.num_epochs=0.3')
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['compilations'] == 1
  assert [row['name'] for row in summary['configs']][:2] == ['max', 'min']
  for name in ('max', 'min'):
    assert summary['exports'][name]['max_abs_logit_difference'] < 1e-4
    assert (workdir / 'export' / name / 'model.json').exists()
  assert 'held-out acc' in result.stdout
  assert os.listdir(workdir / 'supernet' / 'checkpoints') == ['5']
  # rerun: the finished supernet is restored, not trained again
  rerun = run('autoslim_jax.main', '--config=configs/quickstart.py', f'--workdir={workdir}',
              '--config.supernet.num_epochs=0.3')
  assert 'training complete' in rerun.stderr


def test_main_refuses_unknown_model(tmp_path):
  result = run('autoslim_jax.main', '--config=configs/quickstart.py',
               '--config.model=mobilenet_v9', f'--workdir={tmp_path}', check=False)
  assert result.returncode == 2
  assert "unknown model 'mobilenet_v9'" in result.stderr


def test_readme_python_example_runs():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  code = readme.split('```python\n', 1)[1].split('```', 1)[0]
  exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
