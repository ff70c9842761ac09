"""What XLA compiles in a run, and JAX's persistent compilation cache.

Compiling is a large share of a short run: on the first H200 run a single supernet step took
60-100 s to compile (runs/accelerator_h200.md), and on a 2-core CPU the quickstart spent 120 s
of its 291 s compiling 127 programs (bench/results.md). ``CompileLog`` records every program
XLA compiles (from JAX's monitoring events: the same numbers ``JAX_LOG_COMPILES=1`` prints),
with the stage that asked for it, and says in the log when a long compilation starts and how
long it took; ``use_persistent_cache`` keeps compiled programs on disk, so a rerun, a resumed run
or the next seed of an experiment loads them instead of compiling again.

Only jax and the standard library: the benchmarks import this module on accelerator images.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
from typing import Iterator

import jax
import jax._src.xla_bridge  # backends_are_initialized: XLA reads its flags once
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from absl import logging

# JAX's events (jax/_src/dispatch.py and compiler.py): the scalar at the start of a compilation
# (its start time), the duration at its end (a persistent-cache load included), a cache hit.
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'

# Compilations at least this long are logged when they end and counted as "long" in summaries
# (the count of issue 26: programs of a second or more).
LONG_COMPILE_SECONDS = 1.0
# A compilation still running after this long is announced, so a silent minute on a GPU's
# autotuner reads as compiling, not as a hang.
NOTICE_AFTER_SECONDS = 5.0


@dataclasses.dataclass
class Compilation:
  name: str  # jit(<function name>)
  seconds: float  # compile time, or the load time of a persistent-cache hit
  stage: str
  cache_hit: bool


class CompileLog:
  """Every program compiled while it is installed (``with CompileLog() as log:``), each with
  the stage set by ``log.stage(name)``. One may be installed at a time per process."""

  def __init__(self, announce: bool = True):
    self.compilations: list[Compilation] = []
    self.stage_walls: list[tuple[str, float]] = []  # (stage, wall seconds), as each ends
    self.announce = announce
    self._stage = 'start'
    self._local = threading.local()
    self._lock = threading.Lock()

  # JAX's listeners: called in the compiling thread, around each backend compilation.
  def _on_start(self, event: str, value: float, fun_name: str = '?', **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    self._local.hit = False
    if self.announce:
      stage = self._stage
      self._local.notice = threading.Timer(
          NOTICE_AFTER_SECONDS, lambda: logging.info('%s: compiling %s ...', stage, fun_name))
      self._local.notice.daemon = True
      self._local.notice.start()

  def _on_event(self, event: str, **kwargs) -> None:
    if event == CACHE_HIT_EVENT:
      self._local.hit = True

  def _on_duration(self, event: str, seconds: float, fun_name: str = '?', **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    notice = getattr(self._local, 'notice', None)
    if notice is not None:
      notice.cancel()
      self._local.notice = None
    hit = getattr(self._local, 'hit', False)
    with self._lock:
      self.compilations.append(Compilation(fun_name, float(seconds), self._stage, hit))
    if self.announce and seconds >= LONG_COMPILE_SECONDS:
      logging.info('%s: %s %s in %.1f s', self._stage,
                   'loaded' if hit else 'compiled', fun_name, seconds)

  def __enter__(self) -> 'CompileLog':
    global _ACTIVE
    if _ACTIVE is not None:
      raise RuntimeError('a CompileLog is already recording in this process')
    _ACTIVE = self
    jax.monitoring.register_scalar_listener(self._on_start)
    jax.monitoring.register_event_listener(self._on_event)
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    return self

  def __exit__(self, *exc) -> None:
    global _ACTIVE
    _ACTIVE = None
    jax.monitoring.unregister_scalar_listener(self._on_start)
    jax.monitoring.unregister_event_listener(self._on_event)
    jax.monitoring.unregister_event_duration_listener(self._on_duration)

  @contextlib.contextmanager
  def stage(self, name: str) -> Iterator[None]:
    """Compilations inside are the stage ``name``'s; its total is logged at the end."""
    previous, self._stage = self._stage, name
    first = len(self.compilations)
    start = time.perf_counter()
    try:
      yield
    finally:
      self._stage = previous
      self.stage_walls.append((name, time.perf_counter() - start))
      mine = self.compilations[first:]
      if mine and self.announce:
        logging.info('%s: %s', name, describe(mine))

  def summary(self, first: int = 0, first_wall: int = 0) -> dict:
    """Programs and seconds per stage and in all, of the compilations from index ``first`` on
    (and the wall seconds of the stages from ``stage_walls[first_wall]`` on); "long" ones took
    LONG_COMPILE_SECONDS or more; ``programs_by_name``: how many programs of each name were
    compiled (not loaded from the cache)."""
    mine = self.compilations[first:]
    stages = collections.OrderedDict()
    for c in mine:
      stages.setdefault(c.stage, []).append(c)
    stages = {name: totals(items) for name, items in stages.items()}
    for name, seconds in self.stage_walls[first_wall:]:
      entry = stages.setdefault(name, totals([]))
      entry['wall_seconds'] = round(entry.get('wall_seconds', 0.0) + seconds, 2)
    return {'total': totals(mine),
            'stages': stages,
            'programs_by_name': dict(collections.Counter(c.name for c in mine if not c.cache_hit)),
            'long_programs': [dataclasses.asdict(c) for c in mine
                              if c.seconds >= LONG_COMPILE_SECONDS]}


_ACTIVE: CompileLog | None = None


@contextlib.contextmanager
def recording() -> Iterator[CompileLog]:
  """The recording log, or a new one for the time of the block (a pipeline run inside an
  experiment adds to the experiment's)."""
  if _ACTIVE is not None:
    yield _ACTIVE
    return
  with CompileLog() as log:
    yield log


def stage(name: str) -> contextlib.AbstractContextManager:
  """``CompileLog.stage`` of the recording log; nothing when none records."""
  return contextlib.nullcontext() if _ACTIVE is None else _ACTIVE.stage(name)


def totals(compilations: list[Compilation]) -> dict:
  compiled = [c for c in compilations if not c.cache_hit]
  return {'programs': len(compiled),
          'long_programs': sum(c.seconds >= LONG_COMPILE_SECONDS for c in compiled),
          'seconds': round(sum(c.seconds for c in compiled), 2),
          'cache_hits': len(compilations) - len(compiled),
          'cache_load_seconds': round(sum(c.seconds for c in compilations if c.cache_hit), 2)}


def describe(compilations: list[Compilation]) -> str:
  t = totals(compilations)
  text = (f'compiled {t["programs"]} programs in {t["seconds"]:.1f} s '
          f'({t["long_programs"]} of {LONG_COMPILE_SECONDS:g} s or more)')
  if t['cache_hits']:
    text += f', loaded {t["cache_hits"]} from the cache in {t["cache_load_seconds"]:.1f} s'
  return text


def default_cache_dir() -> str:
  """``$XDG_CACHE_HOME/autoslim_jax/xla`` (``~/.cache/...``): shared by every run of a user."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'autoslim_jax', 'xla')


def use_persistent_cache(directory: str, min_compile_seconds: float = 0.0) -> str | None:
  """Turns on JAX's persistent compilation cache in ``directory`` for this process; returns the
  directory used (None when off). '' = the folder JAX is already given (JAX_COMPILATION_CACHE_DIR
  or ``jax.config``), else ``default_cache_dir()``; 'none' = off.

  Programs that took at least ``min_compile_seconds`` to compile are kept. The cache key is the
  program, the compiler options, the devices and the versions of jax and jaxlib, so an entry is
  only loaded where it is exactly the program that would be compiled (JAX's design).
  """
  enabled = directory != 'none'
  if enabled and not directory:
    directory = jax.config.jax_compilation_cache_dir or default_cache_dir()
  directory = directory if enabled else None
  if directory and '://' not in directory:
    os.makedirs(directory, exist_ok=True)
  if (enabled, directory) != (jax.config.jax_enable_compilation_cache,
                              jax.config.jax_compilation_cache_dir):
    jax.config.update('jax_enable_compilation_cache', enabled)
    jax.config.update('jax_compilation_cache_dir', directory)
    # JAX opens its cache at the first compilation and keeps it: start again from the new one.
    jax_compilation_cache.reset_cache()
  jax.config.update('jax_persistent_cache_min_compile_time_secs', min_compile_seconds)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


GPU_AUTOTUNE_FLAG = '--xla_gpu_autotune_level'


def set_gpu_autotune_level(level: int) -> None:
  """Sets XLA's GPU autotuning level (-1: leave XLA's default) for this process. XLA reads its
  flags once, when the first backend starts: a level asked for later is refused."""
  if level < 0:
    return
  flags = os.environ.get('XLA_FLAGS', '').split()
  wanted = f'{GPU_AUTOTUNE_FLAG}={level}'
  if wanted in flags:
    return
  if jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
    raise ValueError(f'compilation.gpu_autotune_level={level} must be set before JAX starts its '
                     f'backend; this process has started it (XLA_FLAGS: {" ".join(flags)!r}). '
                     f'Set it in a fresh process, or XLA_FLAGS={wanted}')
  flags = [f for f in flags if not f.startswith(GPU_AUTOTUNE_FLAG + '=')] + [wanted]
  os.environ['XLA_FLAGS'] = ' '.join(flags)
