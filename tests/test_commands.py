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

from conftest import REPO, SHORT_QUICKSTART, command_env, copied_workdir, run

from autoslim_jax import deploy
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


def test_pipeline_imports_no_tensorflow(staged_quickstart):
  """The retraining, export and report stages of the quickstart, run as a command, never
  import TensorFlow (a JAX accelerator image has none)."""
  workdir, _ = staged_quickstart
  modules = (workdir.parent / 'modules.txt').read_text().split()
  assert 'autoslim_jax.input_pipeline' in modules and 'grain' in modules
  assert not [m for m in modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]


def test_main_quickstart_stages_then_resume(staged_quickstart, tmp_path):
  """The whole pipeline, shortened (5 supernet steps, a target close to the max, 5 retraining
  steps): first restricted to supernet and search, then the rest, then a rerun that only reads."""
  workdir, first = staged_quickstart
  assert sorted(os.listdir(workdir / 'supernet' / 'checkpoints')) == ['2', '4', '5']
  assert (workdir / 'search' / 'search.json').exists()
  assert 'retrain' not in first and 'stage export' not in first
  assert 'search step 1:' in first

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
    # The portable artifacts: both written, the ONNX model checked against the JAX program.
    assert description['onnx']['file'] == deploy.ONNX_FILE, description['onnx']
    assert description['onnx']['check']['agree'], description['onnx']['check']
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(deploy.load_jax_program(entry['export']).call(images)),
        module.apply(variables, images, train=False), rtol=1e-4, atol=1e-4)
    # An export's model.json describes its own network (8x8x1 digits, not --model's defaults).
    table = run('autoslim_jax.profile', f'--channels={entry["export"]}/model.json').stdout
    assert 'mobilenet_v1 (cifar layout, 8x8x1, 10 classes)' in table, table
    assert f'({entry["macs"]:,})' in table and f'({entry["params"]:,})' in table, table
  # The searched net's latency in the runtime it would be deployed with.
  table = run('autoslim_jax.profile', f'--channels={target["autoslim"]["export"]}/model.json',
              '--latency', '--latency_backend=onnxruntime').stdout
  assert 'ms (median at batch 1, onnxruntime, 1 CPU thread)' in table, table
  assert 0 < target['uniform']['width_mult'] <= 0.45
  assert target['difference'] == pytest.approx(
      target['autoslim']['test_accuracy'] - target['uniform']['test_accuracy'])
  assert 'macs_0.45x' in (workdir / 'results.md').read_text()
  for plot in ('search_trajectory.png', 'accuracy_vs_macs.png', 'channels_macs_0.45x.png'):
    assert (workdir / 'plots' / plot).stat().st_size > 1000

  rerun = run('autoslim_jax.main', *SHORT_QUICKSTART,
               f'--workdir={copied_workdir(workdir, tmp_path)}')
  assert 'supernet: training complete' in rerun.stderr
  assert 'stage search: complete' in rerun.stderr
  assert 'stage retrain: complete' in rerun.stderr
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


def test_readme_python_examples_run(staged_quickstart):
  """Every Python block of the README; those reading an export (Deploying a searched
  network) read the shortened quickstart's."""
  workdir, _ = staged_quickstart
  exported = json.loads((workdir / 'results.json').read_text())['targets'][0]['autoslim']
  with open(os.path.join(REPO, 'README.md')) as f:
    blocks = [part.split('```', 1)[0] for part in f.read().split('```python\n')[1:]]
  assert len(blocks) >= 5
  readme_export = 'W/export/macs_0.3x/autoslim'
  assert sum(readme_export in code for code in blocks) == 2
  for code in blocks:  # the own-network file only defines; test_zoo.py runs it
    code = code.replace(readme_export, exported['export'])
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
     lambda log, w: any('2' in _listdir(p) for p in _retrain_checkpoint_dirs(w)), 0.3),
    ('during the export', lambda log, w: 'stage export:' in log, 2.0),
)


def _listdir(path):
  # The running pipeline creates, renames and deletes these directories while we look.
  try:
    return os.listdir(path)
  except OSError:
    return []


def _retrain_checkpoint_dirs(workdir):
  """The checkpoint directories under ``workdir/retrain``, not descending into them: orbax
  renames its temporary directories there while we look (``Path.glob('**')`` raises when one
  vanishes mid-walk; ``os.walk`` skips it)."""
  found = []
  for root, dirs, _ in os.walk(workdir / 'retrain'):
    if 'checkpoints' in dirs:
      dirs.remove('checkpoints')
      found.append(os.path.join(root, 'checkpoints'))
  return found


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
