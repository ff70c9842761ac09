"""What a training run logs: its scalars (TensorBoard event files in the workdir, and the log)
and its parameter count.

The scalars went through clu's metric writers, but importing those imports TensorFlow (design.md,
section 5); tensorboardX's event file writer writes the same files with numpy and protobuf alone.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from typing import Mapping

import jax
from absl import logging
from clu import parameter_overview

from autoslim_jax import files
from autoslim_jax import parallel

_WRITERS = itertools.count()  # writers created in this process


def _tensorboardx():
  """tensorboardX, imported without torch.

  tensorboardX imports torch wherever it is installed (1 s at start-up, and torch's CUDA
  libraries in a JAX process) though scalars need neither; a None in ``sys.modules`` makes
  that import fail as on a machine without torch. Imported here, not at the top, so that only
  a training run pays tensorboardX's import.
  """
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None
  try:
    import tensorboardX.event_file_writer  # pylint: disable=g-import-not-at-top
    import tensorboardX.proto.event_pb2  # pylint: disable=g-import-not-at-top
    import tensorboardX.proto.summary_pb2  # pylint: disable=g-import-not-at-top
    import tensorboardX.record_writer  # pylint: disable=g-import-not-at-top
  finally:
    if blocked:
      del sys.modules['torch']
  return tensorboardX


def format_duration(seconds: float) -> str:
  """``1:42`` (minutes:seconds), ``2:05:09`` past an hour."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60}:{rest % 60:02d}'


def _format_scalar(name: str, value: float) -> str:
  value = float(value)
  if name == 'eta_minutes':
    return f'ETA {format_duration(value * 60)}'
  if name == 'images_per_second':
    return f'{value:,.0f} img/s'
  if name == 'epoch':
    return f'epoch {value:.2f}'
  if name == 'learning_rate':
    return f'lr {value:.3g}'
  if 'accuracy' in name:
    return f'{name} {100 * value:.2f}%'
  return f'{name} {value:.4g}'


# Shown last, in this order: where the run is and how fast it goes.
_PROGRESS = ('learning_rate', 'epoch', 'images_per_second', 'eta_minutes')


def format_scalars(step: int, scalars: Mapping[str, float], name: str = '') -> str:
  """One log line as a person reads it: ``supernet [120] loss 5.63, max_accuracy 69.22%, ...,
  lr 0.0147, epoch 6.00, 192 img/s, ETA 1:00`` (the event files keep full precision)."""
  order = sorted(k for k in scalars if k not in _PROGRESS) + [k for k in _PROGRESS
                                                               if k in scalars]
  return (f'{name} ' if name else '') + f'[{step}] ' + ', '.join(
      _format_scalar(key, scalars[key]) for key in order)


class MetricWriter:
  """Scalars to a TensorBoard event file in ``logdir`` and to the INFO log, on the main process
  only (the other processes hold the same values).

  Written synchronously, as clu's writer was (``asynchronous=False``): tensorboardX's
  SummaryWriter queues events for a thread, and its flush() leaves the queued ones unwritten.
  """

  def __init__(self, logdir: str, name: str = ''):
    self._events = None
    self._name = name
    if parallel.is_main_process():
      tensorboardx = _tensorboardx()
      self._proto = tensorboardx.proto
      logdir = files.absolute(logdir)
      tensorboardx.record_writer.directory_check(logdir)
      # The process id and a count in the name, as TensorFlow's: tensorboardX names files by
      # the second alone, and a second writer in the same second would overwrite the first.
      self._events = tensorboardx.event_file_writer.EventsWriter(
          os.path.join(logdir, 'events'), f'.{os.getpid()}.{next(_WRITERS)}')

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._events is None:
      return
    logging.info('%s', format_scalars(step, scalars, self._name))
    summary_pb2 = self._proto.summary_pb2
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=float(value))
        for name, value in scalars.items()])
    self._events.write_event(self._proto.event_pb2.Event(
        wall_time=time.time(), step=step, summary=summary))
    # Written through at every log (every log_every_steps steps): a killed or preempted run
    # keeps its curves up to its last log.
    self._events.flush()

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


# Longer parameter tables are left out of the log (the total stays): a MobileNet v2 has 158
# parameter arrays, one line each, and a pipeline trains several networks.
PARAMETER_TABLE_ROWS = 40


def log_parameters(name: str, params) -> None:
  """The network's parameter arrays (name, shape, size) and their total, once per run."""
  arrays = len(jax.tree_util.tree_leaves(params))
  if arrays <= PARAMETER_TABLE_ROWS:
    logging.info('%s: parameters\n%s', name,
                 parameter_overview.get_parameter_overview(params, include_stats=False))
  else:
    logging.info('%s: %s parameters in %d arrays', name,
                 f'{parameter_overview.count_parameters(params):,}', arrays)
