"""retrain.mode='joint' through the command line: one slimmable network per family over the
searched (and the uniform) configs, and each config exported with BatchNorm statistics of its
own, equal to a calibration of that config alone."""

import json
import os

import flax
import ml_collections
import numpy as np
import pytest

from conftest import REPO, run

from autoslim_jax import evaluate
from autoslim_jax import export
from autoslim_jax import input_pipeline
from autoslim_jax import parallel
from autoslim_jax import pipeline
from autoslim_jax import retrain
from autoslim_jax import search

# The README's own network (three slimmable convs: the quickest compile of any network the
# repository documents) with the README's config: two targets, so one joint network holds two
# configs; 1 supernet step, 2 joint retraining steps per family.
JOINT_FLAGS = ('--config.supernet.num_epochs=0.05', '--config.retrain.mode=joint',
               '--config.retrain.num_epochs=0.1')
TARGETS = ['macs_1x', 'macs_0.75x']


@pytest.fixture(scope='module')
def joint_run(tmp_path_factory):
  """The whole pipeline as a command with joint retraining: (workdir, results.json)."""
  folder = tmp_path_factory.mktemp('joint')
  with open(os.path.join(REPO, 'README.md')) as f:
    code = f.read().split('```python\n# my_cnn.py', 1)[1].split('```', 1)[0]
  user_file = folder / 'my_cnn.py'
  user_file.write_text('# my_cnn.py' + code)
  workdir = folder / 'run'
  run('autoslim_jax.main', f'--config={user_file}', f'--workdir={workdir}', *JOINT_FLAGS)
  return workdir, json.loads((workdir / 'results.json').read_text())


def _flat_batch_stats(variables):
  return flax.traverse_util.flatten_dict(variables['batch_stats'])


def test_joint_retraining_exports_each_config_with_its_own_calibration(joint_run):
  """Per family, one network trained jointly over both targets' configs (no per-target runs);
  each exported config holds that network's weights and the BatchNorm statistics of a
  calibration of that config alone, and the two configs' statistics differ."""
  workdir, results = joint_run
  assert results['retrain']['mode'] == 'joint'
  assert sorted(os.listdir(workdir / 'retrain')) == ['joint_autoslim', 'joint_uniform']
  # The config the command ran with, as it recorded it in the workdir.
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  network, space = pipeline.build_network(config)
  source = input_pipeline.create_source(config.dataset)
  targets = search.read_summary(str(workdir / 'search'))['targets']
  assert [t['name'] for t in targets] == [row['name'] for row in results['targets']] == TARGETS
  states = retrain.run_retrain(config, str(workdir / 'retrain'), network, targets, source,
                               restore_only=True)
  mesh = parallel.make_mesh()
  calibration_step = evaluate.make_calibration_step(network.supernet(), mesh)
  for family in retrain.FAMILIES:
    joint = retrain.trained_variables(states[family])
    exported = {}
    for row in results['targets']:
      entry = row[family]
      _, variables, description = export.load_slim(entry['export'])
      assert description['channels'] == entry['channels']
      own = evaluate.calibrate_batch_stats(
          calibration_step, joint, input_pipeline.calibration_batches(
              source, config.calibration.num_images, config.calibration.batch_size),
          space.as_arrays(entry['channels']), mesh)
      expected = export.slim_variables(network, {'params': joint['params'], 'batch_stats': own},
                                       entry['channels'])
      for path, value in flax.traverse_util.flatten_dict(expected['params']).items():
        np.testing.assert_array_equal(
            flax.traverse_util.flatten_dict(variables['params'])[path], value)
      got = _flat_batch_stats(variables)
      assert got.keys() == _flat_batch_stats(expected).keys()
      for path, value in _flat_batch_stats(expected).items():
        np.testing.assert_allclose(got[path], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f'{family} {row["name"]} {path}')
      exported[row['name']] = got
    # The two configs differ, and so do the statistics of the layers they share: over the
    # channels both keep, some layer's mean or variance differs between them.
    assert results['targets'][0][family]['channels'] != results['targets'][1][family]['channels']
    first, second = (exported[name] for name in TARGETS)
    largest = 0.0
    for path in first:
      n = min(len(first[path]), len(second[path]))
      largest = max(largest, float(np.max(np.abs(first[path][:n] - second[path][:n]))))
    assert largest > 1e-2, family
