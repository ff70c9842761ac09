"""Measured CPU latency of physically slim networks: median wall time at batch 1.

Two backends: ``jax`` (the slim Flax network jitted on XLA:CPU, one thread) and ``onnxruntime``
(its ONNX model, ``deploy.onnx_model``, in onnxruntime's CPU runtime with ``threads`` intra-op
threads: the runtime slim networks are deployed with).

XLA's CPU thread pool is fixed once jax initialises, and the calling process may be running 8
fake devices on every core, so measurements run in a persistent worker subprocess (this module's
``__main__``) pinned to one CPU, with XLA's multi-threaded Eigen off, before it imports jax. The
parent talks to it in JSON lines over stdin/stdout:

  with LatencyMeter('mobilenet_v2', dict(layout='cifar', width_mult=1.0)) as meter:
    ms = meter.measure(config)

The worker is a fresh process: it knows the models ``autoslim_jax.models`` registers on import,
not ones a caller added with ``models.register``. Weights are random (their values do not change
the time), and the time excludes compilation, which is reported apart (``last_reply``).
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

_FORCE_DEVICES = '--xla_force_host_platform_device_count'
# One thread: Eigen's pool off. ``intra_op_parallelism_threads=1`` (no dashes) is the customary
# companion; XLA ignores it, and the CPU pinning is what bounds the thread pool.
SINGLE_THREAD_FLAGS = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
_STDERR_TAIL = 3000
BACKENDS = ('jax', 'onnxruntime')
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
  """The parent's environment for one single-threaded CPU device, the package importable."""
  env = dict(os.environ if environ is None else environ)
  kept = [f for f in env.get('XLA_FLAGS', '').split() if not f.startswith(_FORCE_DEVICES)]
  env['XLA_FLAGS'] = ' '.join(kept + [SINGLE_THREAD_FLAGS])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
      [_PACKAGE_ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  env['PYTHONUNBUFFERED'] = '1'
  return env


def _to_json(value: Any) -> str:
  """One protocol line; numpy scalars in configs become plain numbers."""
  def plain(x):
    if hasattr(x, 'item'):
      return x.item()
    raise TypeError(f'{x!r} ({type(x).__name__}) is not JSON-serialisable')
  return json.dumps(value, default=plain)


class LatencyMeter:
  """Measures slim configs of one network in a worker process started on first use.

  Args:
    model: a name in ``autoslim_jax.models.MODELS``.
    model_kwargs: keyword arguments of the model's factory, JSON-serialisable (they cross to the
      worker as JSON), e.g. ``dict(layout='cifar', width_mult=1.0)``.
    warmup: untimed calls after compilation.
    repeats: timed calls; ``measure`` returns their median.
    backend: ``jax`` or ``onnxruntime`` (``BACKENDS``).
    threads: the CPUs the worker is pinned to, onnxruntime's intra-op threads (jax: 1).
    mode_argument: a plain module's ``config.mode_argument`` (``models.create_network``).
  """

  def __init__(self, model: str, model_kwargs: Mapping[str, Any] | None = None,
               warmup: int = 5, repeats: int = 20, backend: str = 'jax', threads: int = 1,
               mode_argument: str = ''):
    check_backend(backend, threads)
    if not isinstance(warmup, int) or warmup < 0:
      raise ValueError(f'warmup must be an integer >= 0, got {warmup!r}')
    if not isinstance(repeats, int) or repeats < 1:
      raise ValueError(f'repeats must be an integer >= 1, got {repeats!r}')
    self.model = model
    self.model_kwargs = dict(model_kwargs or {})
    self.mode_argument = mode_argument
    try:
      _to_json(self.model_kwargs)
    except TypeError as e:
      raise ValueError(f'model_kwargs {self.model_kwargs} must be JSON-serialisable for the '
                       f'latency worker: {e}') from None
    self.warmup = warmup
    self.repeats = repeats
    self.backend = backend
    self.threads = threads
    self.last_reply: dict[str, Any] | None = None  # the worker's last answer: times, compile_s
    self.worker_info: dict[str, Any] | None = None  # its pid, CPU, devices and network
    self._process: subprocess.Popen | None = None
    self._stderr = None

  def __enter__(self) -> LatencyMeter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  @property
  def pid(self) -> int | None:
    """The worker's process id, None before it starts or after it ends."""
    return None if self._process is None else self._process.pid

  def start(self) -> None:
    """Starts the worker and builds the network there (``measure`` does this when needed)."""
    if self._process is not None:
      return
    self._stderr = tempfile.TemporaryFile(mode='w+', prefix='autoslim_latency_')
    self._process = subprocess.Popen(
        [sys.executable, '-m', 'autoslim_jax.latency'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
        env=worker_environment())
    try:
      self.worker_info = self._request(dict(model=self.model, model_kwargs=self.model_kwargs,
                                            mode_argument=self.mode_argument,
                                            backend=self.backend, threads=self.threads))
    except ValueError:
      self.close()  # the network cannot be built: nothing more this worker can do
      raise

  def measure(self, config: Mapping[str, int]) -> float:
    """Median milliseconds of one batch-1 forward pass of ``config``'s slim network."""
    self.start()
    reply = self._request(dict(config=dict(config), warmup=self.warmup, repeats=self.repeats))
    self.last_reply = reply
    return reply['latency_ms']

  def close(self) -> None:
    """Ends the worker; a later ``measure`` starts a new one."""
    process, self._process = self._process, None
    if process is not None:
      try:
        process.stdin.close()
        process.wait(timeout=10)
      except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()
      process.stdout.close()
    if self._stderr is not None:
      self._stderr.close()
      self._stderr = None

  def _request(self, message: Mapping[str, Any]) -> dict[str, Any]:
    try:
      self._process.stdin.write(_to_json(message) + '\n')
      self._process.stdin.flush()
      line = self._process.stdout.readline()
    except (BrokenPipeError, OSError):
      line = ''
    if not line:
      raise self._died()
    try:
      reply = json.loads(line)
    except json.JSONDecodeError:
      raise RuntimeError(f'the latency worker wrote {line[:200]!r}, not a protocol line') from None
    if 'error' in reply:
      raise ValueError(reply['error'])
    return reply

  def _died(self) -> RuntimeError:
    """The error for a worker that has gone: its exit status and the end of its stderr."""
    process = self._process
    try:
      code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      code = process.wait()
    self._stderr.flush()
    self._stderr.seek(0)
    tail = self._stderr.read()[-_STDERR_TAIL:]
    self.close()
    return RuntimeError(f'the latency worker for {self.model!r} (pid {process.pid}) ended with '
                        f'exit status {code}; the end of its stderr:\n{tail}')


def measure_latency(model: str, model_kwargs: Mapping[str, Any] | None,
                    configs: Sequence[Mapping[str, int]], warmup: int = 5,
                    repeats: int = 20, backend: str = 'jax', threads: int = 1,
                    mode_argument: str = '') -> list[float]:
  """Median milliseconds of each config, all measured by one worker."""
  with LatencyMeter(model, model_kwargs, warmup, repeats, backend, threads,
                    mode_argument) as meter:
    return [meter.measure(config) for config in configs]


def check_backend(backend: str, threads: int) -> None:
  """One-line errors for a misspelled backend, a thread count this host cannot pin, or
  onnxruntime not installed."""
  if backend not in BACKENDS:
    close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(f'unknown latency backend {backend!r}{hint}; valid: {", ".join(BACKENDS)}')
  available = len(os.sched_getaffinity(0))
  if not isinstance(threads, int) or not 1 <= threads <= available:
    raise ValueError(f'latency threads must be an integer from 1 to the {available} CPUs this '
                     f'process may use, got {threads!r}')
  if backend == 'jax' and threads != 1:
    raise ValueError(f'latency threads={threads}: the jax backend measures one thread (XLA:CPU '
                     "fixes its thread pool at start); threads are onnxruntime's")
  if backend == 'onnxruntime':
    from autoslim_jax import deploy  # pylint: disable=g-import-not-at-top
    deploy.require_onnxruntime("the latency backend 'onnxruntime'")


# The worker.


def _pin_to_cpus(count: int) -> list[int]:
  """Binds this process to ``count`` allowed CPUs (the last: the first tends to take
  interrupts)."""
  if 'jax' in sys.modules:
    print('autoslim_jax.latency: jax was imported before pinning the worker to one CPU; its '
          'thread pool may span several', file=sys.stderr)
  cpus = sorted(os.sched_getaffinity(0))[-count:]
  os.sched_setaffinity(0, set(cpus))
  return cpus


def _serve(protocol) -> None:
  """Answers JSON-line requests from stdin on ``protocol`` until stdin closes."""
  first = json.loads(sys.stdin.readline() or 'null')
  if first is None:
    return
  cpus = _pin_to_cpus(first['threads'])
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from autoslim_jax import models  # pylint: disable=g-import-not-at-top

  def reply(value):
    protocol.write(json.dumps(value) + '\n')
    protocol.flush()

  def random_variables(shapes):
    # Weights drawn in numpy: jitting the module's own initialisers compiles for ~10 s, longer
    # than the measurement. Variances are 1 so that batch norm stays finite.
    rng = np.random.default_rng(0)
    def leaf(path, shape):
      if getattr(path[-1], 'key', None) == 'var':
        return jnp.ones(shape.shape, shape.dtype)
      return jnp.asarray(rng.normal(0, 0.1, shape.shape), shape.dtype)
    return jax.tree_util.tree_map_with_path(leaf, shapes)

  def slim_forward(network, config, images, backend, threads):
    """A callable running one batch of ``images`` through the slim net, blocking."""
    module = network.slim_module(config)
    variables = random_variables(jax.eval_shape(
        lambda key: module.init(key, images, train=False), jax.random.key(0)))
    if backend == 'onnxruntime':
      from autoslim_jax import deploy  # pylint: disable=g-import-not-at-top
      model = deploy.onnx_model(deploy.inference_function(module, variables),
                                network.input_shape).SerializeToString()
      session = deploy.onnxruntime_session(model, threads)
      feed = {session.get_inputs()[0].name: np.asarray(images)}
      return lambda: session.run(None, feed)
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    return lambda: forward(variables, images).block_until_ready()

  def time_config(network, config, warmup, repeats, backend, threads):
    images = jnp.zeros((1,) + network.input_shape, jnp.float32)
    started = time.perf_counter()
    run = slim_forward(network, config, images, backend, threads)
    for _ in range(warmup + 1):  # the first call compiles
      run()
    compile_s = time.perf_counter() - started  # building, compiling and warming up
    times = []
    for _ in range(repeats):
      started = time.perf_counter()
      run()
      times.append((time.perf_counter() - started) * 1e3)
    return dict(latency_ms=statistics.median(times), compile_s=compile_s, times_ms=times)

  network = None
  for line in itertools.chain([json.dumps(first)], sys.stdin):
    try:
      request = json.loads(line)
      if network is None:
        try:
          network = models.create_network(request['model'], request['mode_argument'],
                                          **request['model_kwargs'])
        except TypeError as e:
          raise ValueError(f'model {request["model"]!r} rejects model_kwargs '
                           f'{request["model_kwargs"]}: {e}') from None
        except ValueError as e:
          if request['model'] in models.MODELS:
            raise
          raise ValueError(f'{e} (the latency worker is a fresh process: it knows the models '
                           "autoslim_jax.models registers on import, and your own given as "
                           "'module:function' or 'file.py:function')") from None
        reply(dict(pid=os.getpid(), cpus=cpus, devices=jax.device_count(),
                   network=repr(network), backend=first['backend'], threads=first['threads']))
      else:
        reply(time_config(network, request['config'], request['warmup'], request['repeats'],
                          first['backend'], first['threads']))
    except Exception as e:  # pylint: disable=broad-except
      message = str(e) if isinstance(e, ValueError) else f'{type(e).__name__}: {e}'
      reply(dict(error=message))


def main() -> None:
  # Protocol lines go to a private copy of stdout; anything else printing to stdout (Python or C)
  # lands in stderr instead of corrupting the protocol.
  protocol = os.fdopen(os.dup(sys.stdout.fileno()), 'w', buffering=1)
  sys.stdout.flush()
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  _serve(protocol)


if __name__ == '__main__':
  main()
