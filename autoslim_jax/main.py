r"""Runs the AutoSlim pipeline for a config.

  python -m autoslim_jax.main --config=configs/quickstart.py --workdir=/tmp/autoslim_quick

On several hosts (a TPU pod slice, a GPU cluster) run the same command on every host with
``--distributed``: JAX finds the other processes on Cloud TPU, SLURM and Open MPI; elsewhere give
``--coordinator_address``, ``--num_processes`` and ``--process_id`` too. The workdir must be
one folder every host sees (a gs:// bucket, NFS).
"""

import difflib
import glob
import importlib.util
import logging as std_logging
import os
import re
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from autoslim_jax import compilation
from autoslim_jax import defaults
from autoslim_jax import models
from autoslim_jax import parallel
from autoslim_jax import pipeline

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, results, exports.')
OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'If --workdir holds the outputs of a different config, delete them and '
    'start again (without it such a workdir is refused). A rerun of the same config always '
    'resumes.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'One process per host: call jax.distributed.initialize() first.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0 (implies --distributed; needed where '
    'JAX cannot find it itself).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


# --config=FILE (or --config FILE) and --config.KEY=VALUE overrides, as ml_collections reads them.
_CONFIG_FILE = re.compile(r'-{1,2}config(=|$)')
_OVERRIDE = re.compile(r'-{1,2}(?:no)?config\.([^=]+)')
# The configs of this repository, listed when --config names a file that does not exist.
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def check_config_file(path: str) -> None:
  if not os.path.isfile(path):
    known = sorted(os.path.relpath(name) for name in glob.glob(os.path.join(CONFIGS, '*.py')))
    listing = f'; the configs are: {", ".join(known)}' if known else ''
    raise ValueError(f'config file {path} does not exist{listing}')


def check_override(key: str, config_file: str | None = None) -> None:
  """Refuses --config.KEY when no config has KEY; model_kwargs' keys are those the config file
  sets."""
  tree = node = {}
  for part in key.split('.'):
    node = node.setdefault(part, {})
  defaults._check_keys(tree, defaults.get_default_config(), '')  # pylint: disable=protected-access
  section, _, rest = key.partition('.')
  if section == 'model_kwargs' and rest:
    check_model_argument(rest.split('.')[0], config_file)


def check_config_arguments(argv: Sequence[str]) -> None:
  """Refuses a --config file that does not exist and an override of a key that does not
  exist: ml_collections would end the command in a 30-line traceback for either."""
  config_file = None
  for i, arg in enumerate(argv[1:], 1):
    if _CONFIG_FILE.match(arg):
      paths = [arg.split('=', 1)[1]] if '=' in arg else argv[i + 1:i + 2]  # --config FILE
      for path in paths:
        config_file = path
        check_config_file(path.split(':', 1)[0])  # FILE:ARGUMENT passes ARGUMENT to get_config
  for arg in argv[1:]:
    override = _OVERRIDE.match(arg)
    if override:
      check_override(override.group(1), config_file)


def check_model_argument(key: str, config_file: str | None) -> None:
  """Refuses --config.model_kwargs.KEY when the config file's model_kwargs lacks KEY: an
  override can only change a key the file sets."""
  if config_file is None:
    return
  path, _, argument = config_file.partition(':')
  spec = importlib.util.spec_from_file_location('_autoslim_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  given = sorted(config.model_kwargs.keys())
  if key not in given:
    close = difflib.get_close_matches(key, given, n=1)
    hint = f' (did you mean model_kwargs.{close[0]!r}?)' if close else ''
    takes = ', '.join(models.factory_parameters(config.model))
    raise ValueError(
        f'unknown config key model_kwargs.{key!r}{hint}; {path} sets model_kwargs {given} '
        f'(an override can only change those; to pass another argument of {config.model!r}, '
        f'which takes {takes}, set it in the config file)')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after check_config_arguments: a slip in --config ends the command in
  one line on stderr, status 2 (every command that takes --config runs with it)."""
  try:
    check_config_arguments(argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  return app.parse_flags_with_usage(argv)


class _QuietLibraries:
  """Keeps orbax's per-checkpoint INFO chatter out of the progress log (warnings still show)."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def start_processes() -> None:
  """Joins the other processes of a multi-host run; logs each process's share of the devices.
  Only process 0 logs progress after this (the others log warnings and errors)."""
  given = [name for name, flag in (('--num_processes', _NUM_PROCESSES),
                                   ('--process_id', _PROCESS_ID)) if flag.value is not None]
  if given and _COORDINATOR.value is None:
    raise app.UsageError(f'{" and ".join(given)} need --coordinator_address=HOST:PORT (of '
                         'process 0); on Cloud TPU, SLURM or Open MPI use --distributed alone')
  if _COORDINATOR.value is not None:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  if jax.process_count() > 1:
    logging.info('process %d of %d: %d of %d devices (%s), data shards %s', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform, parallel.local_shards())
    if not parallel.is_main_process():
      logging.set_verbosity(logging.WARNING)


def start(argv) -> None:
  """The start of every command of the package: no stray arguments, progress logging, the
  other processes of a multi-host run joined."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  start_processes()
  for handler in std_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())


def run_reporting_errors(function: Callable[[], Any]) -> Any:
  """``function()``; bad input or a diverged run ends the command with the message alone."""
  try:
    return function()
  except ValueError as e:  # bad input: say what and stop, no stack trace from deep inside
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:  # diverged: the message names the step and what was kept
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def main(argv):
  # Before start(): XLA reads its flags when the backend starts, which start() does.
  run_reporting_errors(lambda: compilation.set_gpu_autotune_level(
      FLAGS.config.compilation.gpu_autotune_level))
  start(argv)
  run_reporting_errors(lambda: pipeline.run(FLAGS.config, WORKDIR.value,
                                            overwrite=OVERWRITE.value))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
