"""The command-line entry points, run as a user runs them."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO, command_env, run

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


# Two sandwich members (max and min) halve the supernet step's compile time, and MobileNet v1's
# 14 layers compile about 3x faster than the quickstart's MobileNet v2 (tests/test_zoo_pipeline.py
# runs every model of the zoo).
# Checkpoints every 2 steps give a killed run something to resume from (test_kill_resume.py).
SHORT_QUICKSTART = ('--config=configs/quickstart.py', '--config.model=mobilenet_v1',
                    '--config.supernet.num_epochs=0.25',
                    '--config.supernet.num_sandwich=2',
                    '--config.search.targets.macs_of_width=(0.45,)',
                    '--config.retrain.num_epochs=0.25',
                    '--config.supernet.checkpoint_every_steps=2',
                    '--config.retrain.checkpoint_every_steps=2')


@pytest.fixture(scope='module')
def staged_quickstart(tmp_path_factory):
  """The shortened quickstart run first as supernet and search, then the rest: (workdir, the
  first command's output). Also the reference of the kill-and-resume test."""
  workdir = tmp_path_factory.mktemp('quickstart') / 'quick'
  first = run('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}',
              '--config.stages=supernet,search')
  run_listing_modules('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}',
                      out=workdir.parent / 'modules.txt')
  return workdir, first


def run_listing_modules(*args, out):
  """``python -m *args`` as ``run`` does, writing the names of the modules imported by its
  exit to ``out``."""
  code = ('import atexit, runpy, sys; out = sys.argv.pop(); atexit.register(lambda: open(out, '
          '"w").write("\\n".join(sorted(sys.modules)))); '
          f'runpy.run_module({args[0]!r}, run_name="__main__", alter_sys=True)')
  result = subprocess.run([sys.executable, '-c', code, *args[1:], str(out)], cwd=REPO,
                          env=command_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_pipeline_imports_no_tensorflow(staged_quickstart):
  """The retraining, export and report stages of the quickstart, run as a command, never
  import TensorFlow (a JAX accelerator image has none)."""
  workdir, _ = staged_quickstart
  modules = (workdir.parent / 'modules.txt').read_text().split()
  assert 'autoslim_jax.input_pipeline' in modules and 'grain' in modules
  assert not [m for m in modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]


def test_main_quickstart_stages_then_resume(staged_quickstart):
  """The whole pipeline, shortened (5 supernet steps, a target close to the max, 5 retraining
  steps): first restricted to supernet and search, then the rest, then a rerun that only reads."""
  workdir, first = staged_quickstart
  assert sorted(os.listdir(workdir / 'supernet' / 'checkpoints')) == ['2', '4', '5']
  assert (workdir / 'search' / 'search.json').exists()
  assert 'retrain' not in first.stderr and 'stage export' not in first.stderr
  assert 'search step 1:' in first.stderr

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


def test_main_refuses_process_flags_without_a_coordinator(tmp_path):
  result = run('autoslim_jax.main', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
               '--num_processes=2', '--process_id=1', check=False)
  assert result.returncode != 0
  assert '--num_processes and --process_id need --coordinator_address=HOST:PORT' in result.stderr
  assert not os.listdir(tmp_path)  # refused before anything was written


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


def _output_summary(workdir):
  """What a run leaves that must not depend on interruptions: results, trajectory, exports."""
  results = json.loads((workdir / 'results.json').read_text())
  trajectory = [json.loads(line) for line in (workdir / 'search' / 'trajectory.jsonl').open()]
  for record in trajectory:
    record.pop('seconds', None)
  exports = {}
  for target in results['targets']:
    for family in ('autoslim', 'uniform'):
      _, variables, description = export.load_slim(target[family]['export'])
      exports[target['name'], family] = (description['channels'], variables)
      target[family].pop('export')
  results.pop('search_trajectory')
  return results, trajectory, exports


# Where the kill-and-resume test kills the pipeline: (what, condition on (stderr so far,
# workdir), longest random delay in seconds after the condition holds).
KILL_POINTS = (
    ('during a supernet checkpoint write',
     lambda log, w: any('tmp' in n for n in _listdir(w / 'supernet' / 'checkpoints')), 0.0),
    ('during the search', lambda log, w: 'search step 1:' in log, 0.3),
    ('during retraining',
     lambda log, w: any('2' in _listdir(p) for p in w.glob('retrain/*/*/checkpoints')), 0.3),
    ('during the export', lambda log, w: 'stage export:' in log, 2.0),
)


def _listdir(path):
  return os.listdir(path) if os.path.isdir(path) else []


def _run_until_killed(args, workdir, condition, max_delay, rng):
  """Starts ``python -m args``; SIGKILLs it a random delay after ``condition`` holds. Returns
  whether it was killed (False: it ended first)."""
  process = subprocess.Popen([sys.executable, '-m', *args], cwd=REPO, env=command_env(),
                             text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
  reader.start()
  deadline = time.monotonic() + 300
  while process.poll() is None and time.monotonic() < deadline:
    if condition(''.join(lines), workdir):
      time.sleep(rng.uniform(0, max_delay))
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    time.sleep(0.01)
  process.wait(timeout=60)
  assert process.returncode == 0, ''.join(lines)[-3000:]
  return False


def test_killed_at_random_points_resumes_to_the_same_results(staged_quickstart, tmp_path):
  """SIGKILL at four points (inside a supernet checkpoint write, then a random delay after the
  search's, retraining's and export's landmarks); rerunning the same command after each kill
  ends with the same results, search trajectory and exported networks as the run that was never
  killed."""
  workdir = tmp_path / 'killed'
  args = ('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}')
  rng = random.Random(0)
  killed = [what for what, condition, max_delay in KILL_POINTS
            if _run_until_killed(args, workdir, condition, max_delay, rng)]
  assert len(killed) >= 3, killed  # a short stage may end before a delayed kill lands
  run(*args)

  reference_results, reference_trajectory, reference_exports = _output_summary(
      staged_quickstart[0])
  results, trajectory, exports = _output_summary(workdir)
  assert trajectory == reference_trajectory
  assert results == reference_results
  for key, (channels, variables) in reference_exports.items():
    assert exports[key][0] == channels
    for a, b in zip(jax.tree_util.tree_leaves(variables),
                    jax.tree_util.tree_leaves(exports[key][1])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_colab_notebook_runs_top_to_bottom(staged_quickstart):
  """launch/colab_quickstart.ipynb executed headless, as Colab's Run all does, on the staged run's
  workdir (its pipeline cell resumes the finished run, so only the report cells work): no cell
  fails, and the outputs hold the results table, the figures and the exported net's predictions."""
  import re  # pylint: disable=g-import-not-at-top
  import nbclient  # pylint: disable=g-import-not-at-top  # the test extra
  import nbformat  # pylint: disable=g-import-not-at-top

  workdir, _ = staged_quickstart
  notebook = nbformat.read(os.path.join(REPO, 'launch', 'colab_quickstart.ipynb'), as_version=4)
  nbformat.validate(notebook)
  code_cells = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert not any(cell.outputs or cell.execution_count for cell in code_cells), (
      'save the notebook with its outputs cleared')
  (parameters,) = [cell for cell in code_cells if 'parameters' in cell.metadata.get('tags', [])]
  flags = [flag for flag in SHORT_QUICKSTART if flag != '--config=configs/quickstart.py']
  parameters.source = (f'WORKDIR = {str(workdir)!r}\nEXTRA_FLAGS = {flags!r}\n'
                       "REPO_URL = 'https://github.com/OWNER/autoslim-jax'")
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': REPO}})
  client.execute(env=command_env())  # raises CellExecutionError at the first failing cell
  outputs = {cell.id: cell.outputs for cell in code_cells}

  def text(cell_id):
    return ''.join(o.get('text', '') for o in outputs[cell_id] if o.output_type == 'stream')

  def images(cell_id):
    return sum('image/png' in o.get('data', {}) for o in outputs[cell_id])

  assert not [o for cell in code_cells for o in cell.outputs if o.output_type == 'error']
  assert 'supernet: training complete' in text('run')  # resumed: nothing trained again
  assert '| macs_0.45x |' in text('run') and '| macs_0.45x |' in text('results')
  assert any('text/markdown' in o.get('data', {}) for o in outputs['results'])
  assert images('curves') == 1 and images('search') == 1 and images('classify') == 1
  assert images('results') == len(list((workdir / 'plots').glob('*.png'))) - 1  # + trajectory
  classified = text('classify')
  assert 'predicted: [' in classified and 'true:      [' in classified
  # The loaded net on the test digits, normalized as the pipeline does, scores as the export did.
  loaded, reported = re.search(r'loaded network: ([\d.]+)% \(results.json: ([\d.]+)%\)',
                               classified).groups()
  assert loaded == reported


def test_experiment_over_seeds_and_estimator_study(staged_quickstart, tmp_path):
  """python -m autoslim_jax.experiment on the shortened quickstart with seeds 0 and 1 (seed 0 is
  the staged run, copied: the experiment resumes it and trains seed 1) and an estimator study
  of the searched and uniform nets plus one random config (path configs: tests/test_experiment.py)."""
  import shutil  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / 'experiment'
  shutil.copytree(staged_quickstart[0], workdir / 'seed_0')
  result = run('autoslim_jax.experiment', *SHORT_QUICKSTART, f'--workdir={workdir}',
               '--seeds=0,1', '--estimator_path=0', '--estimator_random=1')
  assert 'stage export: complete' in result.stderr  # seed 0 resumed, not trained again
  seed_1 = json.loads((workdir / 'seed_1' / 'config.json').read_text())
  assert seed_1['seed'] == 1

  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['seeds'] == [0, 1]
  (target,) = summary['targets']
  per_seed = [json.loads((workdir / f'seed_{s}' / 'results.json').read_text())['targets'][0]
              for s in (0, 1)]
  for family in ('autoslim', 'uniform'):
    accuracies = [t[family]['test_accuracy'] for t in per_seed]
    assert target[family]['test_accuracy']['values'] == accuracies
    assert target[family]['test_accuracy']['mean'] == pytest.approx(np.mean(accuracies))
    assert target[family]['macs']['mean'] <= target['value']
  (record,) = summary['runs']
  assert record['command'].endswith('--estimator_path=0 --estimator_random=1')
  assert record['versions']['jax'] == jax.__version__ and record['platform'] == 'cpu'
  assert set(record['seed_seconds']) == {'0', '1'} and record['seconds'] > 0
  assert '| macs_0.45x |' in (workdir / 'summary.md').read_text()
  assert '| macs_0.45x |' in result.stdout and 'Kendall tau' in result.stdout
  assert (workdir / 'accuracy_vs_macs.png').exists()

  report = json.loads((workdir / 'estimator' / 'estimator.json').read_text())
  assert sorted(c['kind'] for c in report['configs']) == ['autoslim', 'random', 'uniform']
  searched = next(c for c in report['configs'] if c['kind'] == 'autoslim')
  assert searched['scratch_test_accuracy'] == per_seed[0]['autoslim']['test_accuracy']
  # the supernet scores the searched net on the held-out split as the search did
  assert searched['heldout_batch_stats'] == pytest.approx(per_seed[0]['autoslim'][
      'heldout_accuracy'])
  for config in report['configs']:
    for key in ('heldout_batch_stats', 'heldout_calibrated', 'scratch_test_accuracy'):
      assert 0 <= config[key] <= 1, (config['name'], key)
  for name in ('batch_stats', 'calibrated', 'macs'):
    tau = report['kendall_tau'][name]['tau']
    assert tau is None or -1 <= tau <= 1
  assert summary['estimator']['kendall_tau'] == report['kendall_tau']
  assert (workdir / 'estimator' / 'estimator.png').exists()

  # An ablation scores the study's configs with its own supernet (runs/
  # cifar10_sample_ablations.sh; another recipe refused: tests/test_experiment.py). Here the same
  # supernet again (seed 0 restored): the same configs, scores and taus.
  reference = workdir / 'estimator' / 'reference.json'
  shutil.copy(workdir / 'estimator' / 'estimator.json', reference)
  run('autoslim_jax.experiment', *SHORT_QUICKSTART, f'--workdir={workdir}', '--seeds=0',
      f'--estimator_reference={reference}')
  again = json.loads((workdir / 'estimator' / 'estimator.json').read_text())
  assert [(c['name'], c['kind']) for c in again['configs']] == [
      (c['name'] if c['kind'] != 'random' else f'reference_{c["name"]}', c['kind'])
      for c in report['configs']]
  assert again['kendall_tau'] == report['kendall_tau']


def test_calibration_variants_script_on_a_finished_run(staged_quickstart):
  """runs/calibration_variants.py (runs/calibration.md) on the shortened quickstart's workdir."""
  workdir, _ = staged_quickstart
  result = subprocess.run([sys.executable, os.path.join('runs', 'calibration_variants.py'),
                           str(workdir), '--images=64', '--batch_size=32'], cwd=REPO,
                          env=command_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| macs_0.45x')]
  assert len(rows) == 6 and sum('| deployed |' in row for row in rows) == 2
