"""Commands that report on a finished run: the Colab notebook, the experiment over seeds, the
calibration-variants script. Apart from tests/test_commands.py so that the suite's two workers
share the commands' time; both files use the one shared staged quickstart (tests/conftest.py).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, SHORT_QUICKSTART, command_env, copied_workdir, run


def test_colab_notebook_runs_top_to_bottom(staged_quickstart, tmp_path):
  """launch/colab_quickstart.ipynb executed headless, as Colab's Run all does, on the staged run's
  workdir (its pipeline cell resumes the finished run, so only the report cells work): no cell
  fails, and the outputs hold the results table, the figures and the exported net's predictions."""
  import re  # pylint: disable=g-import-not-at-top
  import nbclient  # pylint: disable=g-import-not-at-top  # the test extra
  import nbformat  # pylint: disable=g-import-not-at-top

  workdir = copied_workdir(staged_quickstart[0], tmp_path)
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
