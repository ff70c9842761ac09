"""Portable artifacts of a slim network: a serialized JAX program and an ONNX model.

Both take what the Flax network takes, float32 NHWC images normalised as in training
(``model.json``'s ``input``: ``(pixel / 255 - mean) / std``), with any batch size, and return
its logits. Neither needs this package to run:

- ``model.jax_exported``: ``jax.export`` (StableHLO, weights inside), lowered for CPU, CUDA and
  TPU: ``jax.export.deserialize(data).call(images)``.
- ``model.onnx``: the same program as ONNX (``onnx_graph``: BatchNorm folded into the
  convolutions), written only after onnxruntime gave the JAX program's logits on real test
  images: the largest logit difference and the top-1 agreement are kept in ``model.json``.

Both are traced with the native convolutions (``layers.native_conv_forms``): a runtime's conv
kernels, not XLA:CPU's workarounds.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from autoslim_jax import files
from autoslim_jax import layers
from autoslim_jax import onnx_graph

JAX_PROGRAM_FILE = 'model.jax_exported'
ONNX_FILE = 'model.onnx'
ONNX_MODES = ('auto', 'always', 'never')
# onnxruntime agrees with the JAX program when no logit differs by more than this fraction of
# the largest logit (at least 1): float32 rounding of convolutions summed in another order.
ONNX_TOLERANCE = 1e-4
_INSTALL_HINT = "pip install -e '.[onnx]' (onnx and onnxruntime)"


def onnx_available() -> bool:
  return all(importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxruntime'))


def require_onnxruntime(what: str) -> None:
  """A one-line error when ``what`` needs onnxruntime and it is not installed."""
  if not onnx_available():
    raise ImportError(f'{what} needs onnx and onnxruntime, which are not installed: '
                      f'{_INSTALL_HINT}')


def inference_function(module, variables):
  """``images -> logits`` of a slim module with its variables as constants."""
  def forward(images):
    return module.apply(variables, images, train=False)
  return forward


def reference_logits(module, variables, images: np.ndarray) -> np.ndarray:
  """The slim net's logits, computed as the artifacts compute them (native convolutions), on
  the CPU: an accelerator's float32 convolutions may round through TF32 or bfloat16 passes,
  which onnxruntime's CPU check would read as a disagreement.

  The variables are arguments, not constants as in the artifacts: a rerun or another seed that
  searched the same widths finds this program in the compilation cache. A slim net's shapes are
  its widths, so this is the one program a newly searched width compiles.
  """
  def export_check(variables, images):
    return module.apply(variables, images, train=False)
  with layers.native_conv_forms(), jax.default_device(jax.devices('cpu')[0]):
    return np.asarray(jax.jit(export_check)(variables, images))


def symbolic_images(input_shape: Sequence[int]) -> jax.ShapeDtypeStruct:
  batch, = jax.export.symbolic_shape('batch')
  return jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)


def export_jax_program(forward, input_shape: Sequence[int],
                       platforms: Sequence[str] = ('cpu', 'cuda', 'tpu')) -> jax.export.Exported:
  with layers.native_conv_forms():
    return jax.export.export(jax.jit(forward), platforms=tuple(platforms))(
        symbolic_images(input_shape))


def onnx_model(forward, input_shape: Sequence[int], name: str = 'slim_network'):
  with layers.native_conv_forms():
    return onnx_graph.to_onnx(forward, input_shape, name)


def check_translatable(network) -> None:
  """Raises ``onnx_graph.ConversionError`` now, before anything trains, when the network's
  ONNX model could not be built (``config.export.onnx='always'``): its max config is translated
  with zero weights (the translation does not depend on their values)."""
  module = network.slim_module(network.channel_space().max_config())
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                              jnp.zeros((1,) + network.input_shape), train=False))
  zeros = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
  onnx_model(inference_function(module, zeros), network.input_shape)


def onnxruntime_session(model_bytes: bytes, threads: int = 1):
  """A CPU session with ``threads`` intra-op threads and the full graph optimisations."""
  require_onnxruntime('running an ONNX model')
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.log_severity_level = 3  # errors only
  return ort.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])


def compare_logits(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
  reference, got = np.asarray(reference, np.float32), np.asarray(got, np.float32)
  difference = float(np.max(np.abs(reference - got)))
  scale = max(1.0, float(np.max(np.abs(reference))))
  return {'images': int(reference.shape[0]), 'max_abs_logit_difference': difference,
          'largest_abs_logit': float(np.max(np.abs(reference))),
          'top1_agreement': float(np.mean(reference.argmax(-1) == got.argmax(-1))),
          'tolerance': ONNX_TOLERANCE * scale, 'agree': difference <= ONNX_TOLERANCE * scale}


def write_artifacts(directory: str, module, variables, input_shape: Sequence[int],
                    images: np.ndarray, onnx: str = 'auto',
                    platforms: Sequence[str] = ('cpu', 'cuda', 'tpu')) -> dict[str, Any]:
  """Writes the JAX program and (``onnx``: auto = when installed, always, never) the ONNX model
  of the slim ``module`` into ``directory``; returns their description for ``model.json``.

  The ONNX model is checked on ``images`` against the JAX program before it is written; a
  disagreement beyond float32 rounding raises ValueError and writes nothing.
  """
  if onnx not in ONNX_MODES:
    raise ValueError(f'config.export.onnx must be one of {ONNX_MODES}, got {onnx!r}')
  if onnx == 'always':
    require_onnxruntime("config.export.onnx='always'")
  forward = inference_function(module, variables)
  exported = export_jax_program(forward, input_shape, platforms)
  program = exported.serialize()
  files.write_atomic(os.path.join(directory, JAX_PROGRAM_FILE), bytes(program))
  images = np.asarray(images, np.float32)
  reference = reference_logits(module, variables, images)
  description = {
      'jax_program': {'file': JAX_PROGRAM_FILE, 'bytes': len(program),
                      'platforms': list(exported.platforms), 'jax_version': jax.__version__},
  }
  if onnx == 'never' or (onnx == 'auto' and not onnx_available()):
    description['onnx'] = {'file': None, 'why': (
        'config.export.onnx=never' if onnx == 'never' else f'not installed: {_INSTALL_HINT}')}
    return description
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  try:
    model = onnx_model(forward, input_shape).SerializeToString()
  except onnx_graph.ConversionError as e:
    if onnx == 'always':
      raise
    logging.warning('%s: no ONNX model: %s', directory, e)
    description['onnx'] = {'file': None, 'why': f'not translatable: {e}'}
    return description
  got = onnxruntime_session(model).run(None, {onnx_graph.INPUT_NAME: images})[0]
  check = compare_logits(reference, got)
  if not check['agree']:
    raise ValueError(
        f'{directory}: the ONNX model disagrees with the JAX program on {check["images"]} test '
        f'images (largest logit difference {check["max_abs_logit_difference"]:.3g} > '
        f'{check["tolerance"]:.3g}, top-1 agreement {check["top1_agreement"]:.4f}); not written')
  files.write_atomic(os.path.join(directory, ONNX_FILE), model)
  description['onnx'] = {'file': ONNX_FILE, 'bytes': len(model), 'opset': onnx_graph.OPSET,
                         'onnxruntime_version': ort.__version__, 'check': check}
  return description


def load_jax_program(directory: str):
  """The ``jax.export.Exported`` of an export directory (``.call(images)`` gives logits)."""
  path = os.path.join(directory, JAX_PROGRAM_FILE)
  if not files.exists(path):
    raise FileNotFoundError(f'no JAX program in {directory!r}: {JAX_PROGRAM_FILE} is missing '
                            '(exported before 2026-12-06: rerun the export stage)')
  return jax.export.deserialize(bytearray(files.read_bytes(path)))


def input_description(input_shape: Sequence[int], mean: Sequence[float],
                      std: Sequence[float]) -> dict[str, Any]:
  """What both artifacts take, for ``model.json``."""
  return {'shape': ['batch'] + [int(d) for d in input_shape], 'dtype': 'float32',
          'layout': 'NHWC', 'normalization': '(pixel / 255 - mean) / std',
          'mean': [float(m) for m in mean], 'std': [float(s) for s in std]}
