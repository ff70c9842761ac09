r"""Runs the AutoSlim pipeline for a config.

  python -m autoslim_jax.main --config=configs/quickstart.py --workdir=/tmp/autoslim_quick
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from autoslim_jax import pipeline

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, results, exports.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'If --workdir holds the outputs of a different config, delete them and '
    'start again (without it such a workdir is refused). A rerun of the same config always '
    'resumes.')
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Keeps orbax's per-checkpoint INFO chatter out of the progress log (warnings still show)."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  for handler in std_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
  try:
    pipeline.run(flags.FLAGS.config, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except ValueError as e:  # bad input: say what and stop, no stack trace from deep inside
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:  # diverged: the message names the step and what was kept
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
