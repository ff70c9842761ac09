"""Test set-up: 8 fake CPU devices, tiny networks shared across tests."""

import os
import pathlib
import subprocess
import sys

# TensorBoard's reader of event files (before the XLA set-up below: it imports no jax).
from tensorboard.backend.event_processing import event_accumulator

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tests build the same small train steps several times (a run, then its resumption): keep their
# compiled code on disk so that each compiles once per test session.
jax.config.update('jax_compilation_cache_dir', os.path.join(
    os.environ.get('TMPDIR', '/tmp'), 'autoslim_jax_test_compilation_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from autoslim_jax import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BACKEND_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _BACKEND_COMPILES.append(event)
    if event == '/jax/core/compile/backend_compile_duration' else None)


# The suite's two xdist workers take files whole (--dist loadfile), in collection order
# (--no-loadscope-reorder: xdist would otherwise sort files by their number of tests, and the
# accelerator command's 2-4 minute smoke run, one test, started last while the other worker
# idled). Longest first, so that the long files start early and the short ones fill the end;
# per-file times of a fresh-clone run; the rest follow alphabetically.
LONGEST_FILES_FIRST = (
    'test_commands.py', 'test_search.py', 'test_accelerator_run.py', 'test_zoo_pipeline.py',
    'test_bench.py', 'test_quickstart_reports.py', 'test_multihost.py', 'test_cli_options.py',
    'test_plain_network.py', 'test_corpus.py', 'test_nnx.py', 'test_side_by_side.py',
    'test_supernet_run.py', 'test_train.py', 'test_folder_pipeline.py', 'test_plain_pipeline.py')


def pytest_collection_modifyitems(items):
  rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


def backend_compiles() -> int:
  """XLA compilations in this process so far (a program found in the persistent compilation
  cache does not count): tests compare it before and after to prove nothing compiled."""
  return len(_BACKEND_COMPILES)


def command_env():
  """The environment of the commands tests run: CPU, and the tests' compilation cache."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')


def run(*args, check=True):
  """Runs ``python -m *args`` in the repository as a user would; asserts success by default."""
  result = subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=command_env(),
                          capture_output=True, text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


# Two sandwich members (max and min) halve the supernet step's compile time, and MobileNet v1's
# 14 layers compile about 3x faster than the quickstart's MobileNet v2 (tests/test_zoo_pipeline.py
# runs every model of the zoo).
# Checkpoints every 2 steps give a killed run something to resume from (tests/test_commands.py).
SHORT_QUICKSTART = ('--config=configs/quickstart.py', '--config.model=mobilenet_v1',
                    '--config.supernet.num_epochs=0.25',
                    '--config.supernet.num_sandwich=2',
                    '--config.search.targets.macs_of_width=(0.45,)',
                    '--config.retrain.num_epochs=0.25',
                    '--config.supernet.checkpoint_every_steps=2',
                    '--config.retrain.checkpoint_every_steps=2')
# The shortened quickstart's schedule alone: for a config file of one's own network (its model
# and its targets kept).
SHORT_SCHEDULE = tuple(a for a in SHORT_QUICKSTART if not a.startswith(
    ('--config=', '--config.model=', '--config.search.targets')))


@pytest.fixture(scope='session')
def staged_quickstart(tmp_path_factory, worker_id):
  """The shortened quickstart run first as supernet and search, then the rest: (workdir, the
  first command's stderr). Also the reference of the kill-and-resume test.

  Built once for the whole suite, by whichever xdist worker asks first (the others wait on the
  lock and reuse it), so the files that use it can go to both workers. Tests must not write
  into it: those that run a command on it copy it first (``copied_workdir``).
  """
  import filelock  # pylint: disable=g-import-not-at-top  # the test extra
  shared = tmp_path_factory.getbasetemp()
  if worker_id != 'master':
    shared = shared.parent  # the workers' common folder
  root = shared / 'staged_quickstart'
  workdir, first_stderr = root / 'quick', root / 'first_stderr.txt'
  with filelock.FileLock(str(shared / 'staged_quickstart.lock')):
    if not (root / 'done').exists():
      root.mkdir(exist_ok=True)
      first = run('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}',
                  '--config.stages=supernet,search')
      run_listing_modules('autoslim_jax.main', *SHORT_QUICKSTART, f'--workdir={workdir}',
                          out=root / 'modules.txt')
      first_stderr.write_text(first.stderr)
      (root / 'done').touch()
  return workdir, first_stderr.read_text()


def copied_workdir(workdir, tmp_path):
  """A private copy of a shared finished run, for a test that runs a command on it."""
  import shutil  # pylint: disable=g-import-not-at-top
  return pathlib.Path(shutil.copytree(workdir, tmp_path / workdir.name))


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


def read_scalars(logdir) -> dict[str, dict[int, float]]:
  """The scalars of the TensorBoard event files in ``logdir`` (name -> {step: value}), read by
  TensorBoard's own reader, as TensorBoard and the Colab notebook read them."""
  events = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0})
  events.Reload()
  return {tag: {event.step: event.value for event in events.Scalars(tag)}
          for tag in events.Tags()['scalars']}


@pytest.fixture(scope='session')
def tiny_network():
  """A 0.5x CIFAR-layout MobileNet v2 on 8x8 images: every unit has several choices."""
  return models.create_network('mobilenet_v2', layout='cifar', width_mult=0.5, image_size=8)


@pytest.fixture(scope='session')
def tiny_variables(tiny_network):
  return tiny_network.init(jax.random.key(0), batch_size=2)


# One tiny network per model of the zoo (8x8 CIFAR layout): every unit keeps several choices.
TINY_ZOO = {
    'mobilenet_v1': dict(layout='cifar', width_mult=0.5, image_size=8),
    'mobilenet_v2': dict(layout='cifar', width_mult=0.5, image_size=8),
    'mnasnet': dict(layout='cifar', width_mult=0.5, image_size=8),
    'resnet50': dict(layout='cifar', width_mult=0.25, image_size=8),
}


@pytest.fixture(scope='session', params=sorted(TINY_ZOO))
def zoo_network(request):
  """Each model of the zoo in turn, tiny."""
  return models.create_network(request.param, **TINY_ZOO[request.param])


@pytest.fixture(scope='session')
def zoo_variables(zoo_network):
  """Initial params with non-trivial BatchNorm running statistics (means N(0, 0.1), variances
  uniform in [0.5, 1.5]), so a wrongly sliced statistic shows in the logits of a slim export."""
  variables = jax.device_get(zoo_network.init(jax.random.key(0), batch_size=2))
  rng = np.random.default_rng(0)

  def randomize(path, leaf):
    if path[-1].key == 'mean':
      return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)

  batch_stats = jax.tree_util.tree_map_with_path(randomize, variables['batch_stats'])
  return {'params': variables['params'], 'batch_stats': batch_stats}


def mock_cifar_config(model, model_kwargs):
  """Supernet and search of a CIFAR-layout ``model`` on tfds' mock cifar10 (1 step)."""
  config = defaults.get_default_config()
  config.model = model
  config.model_kwargs = ml_collections.ConfigDict(dict(layout='cifar', **model_kwargs))
  config.dataset.update(dict(name='cifar10', heldout_size=16, augmentation='crop_flip'))
  config.supernet.update(dict(batch_size=32, num_sandwich=2, base_learning_rate=0.05,
                              base_batch_size=32, num_epochs=1.0, eval_batch_size=16,
                              log_every_steps=1, eval_every_steps=0))
  config.search.batch_size = 16
  config.stages = 'supernet,search'
  return config
