"""The portable artifacts of slim networks (autoslim_jax/deploy.py, onnx_graph.py): the
jax.export program and the ONNX model give the slim network's logits, for each zoo network at
two widths and for two plain Flax networks; the JAX program runs in a fresh process without
this package; disagreements and untranslatable programs are refused, not written.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from autoslim_jax import deploy
from autoslim_jax import export
from autoslim_jax import models
from autoslim_jax import onnx_graph

ZOO = {
    'mobilenet_v1': dict(layout='cifar', width_mult=0.5, image_size=8, in_channels=1),
    'mobilenet_v2': dict(layout='cifar', width_mult=0.5, image_size=8, in_channels=1),
    'mnasnet': dict(layout='cifar', width_mult=0.5, image_size=8, in_channels=1),
    # The ImageNet layout: a strided stem and a max pool.
    'resnet50': dict(layout='imagenet', width_mult=0.25, image_size=32, num_classes=10),
}


class PoolingNet(nn.Module):
  """A plain network of other shapes: max and average pooling, a gate reshaped from pooled
  features, global max pooling into a biased dense layer, BatchNorm without scale, GELU,
  softplus and hard swish, and a 'training' mode argument."""

  @nn.compact
  def __call__(self, x, training: bool = False):
    x = nn.Conv(16, (3, 3), use_bias=False)(x)
    x = nn.hard_swish(nn.BatchNorm(use_running_average=not training, use_scale=False)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Conv(24, (3, 3), padding='VALID')(x)
    x = nn.BatchNorm(use_running_average=not training)(x)
    x = nn.gelu(x) + 0.1 * nn.softplus(x)
    x = nn.avg_pool(x, (2, 2), strides=(1, 1), padding='SAME')
    pooled = jnp.mean(x, axis=(1, 2))
    x = x * nn.sigmoid(pooled.reshape((x.shape[0], 1, 1, pooled.shape[-1])))
    return nn.Dense(10)(jnp.max(x, axis=(1, 2)))


def pooling_net(image_size=12, in_channels=3):
  del image_size, in_channels
  return PoolingNet()


def _network(name):
  if name == 'plain_cnn':
    return models.create_network('tests/plain_cnn.py:plain_cnn', image_size=8, in_channels=1)
  if name.startswith('shufflenet'):  # one layer's channels split (tests/corpus_shufflenet.py)
    return models.create_network(f'tests/corpus_shufflenet.py:{name}', image_size=8,
                                 in_channels=1)
  if name == 'pooling_net':
    return models.create_network('tests/test_deploy.py:pooling_net', image_size=12,
                                 in_channels=3)
  return models.create_network(name, **ZOO[name])


def _random_variables(module, input_shape, seed=0):
  """Variables with every value nonzero and BatchNorm statistics away from 0 and 1, so that a
  mistake in folding them shows in the logits."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1,) + input_shape),
                                              train=False))
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = getattr(path[-1], 'key', '')
    if name == 'var':
      return rng.uniform(0.5, 2.0, shape.shape).astype(shape.dtype)
    if name == 'kernel':
      fan_in = int(np.prod(shape.shape[:-1]))
      return (rng.normal(0, 1, shape.shape) / np.sqrt(fan_in)).astype(shape.dtype)
    return rng.normal(0, 0.3, shape.shape).astype(shape.dtype) + (
        1.0 if name == 'scale' else 0.0)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _configs(network):
  """Two widths: the min config and a nonuniform one (units at 40% to 85% of their max)."""
  space = network.channel_space()
  low, high = space.min_config(), space.max_config()
  mixed = {u: max(low[u], int(high[u] * (0.4 + 0.15 * (i % 4))))
           for i, u in enumerate(network.unit_names)}
  return {'min': low, 'mixed': space.validate(dict(mixed, **{u: high[u]
                                                             for u in network.fixed_units}))}


CASES = [(name, which) for name in ZOO for which in ('min', 'mixed')] + [
    ('plain_cnn', 'min'), ('pooling_net', 'mixed'), ('shufflenet', 'narrow'),
    ('shufflenet_slices', 'narrow')]
# Below the channel space's choices (multiples of 8): the split pieces at other widths.
SHUFFLENET_NARROW = {'stem[0:8]': 5, 'stem[8:16]': 3, 'unit1/Conv_0': 6, 'unit1/Conv_2': 4,
                     'unit2/Conv_0': 7, 'unit2/Conv_2': 2}


@pytest.mark.parametrize('name,which', CASES)
def test_artifacts_give_the_slim_networks_logits(name, which, tmp_path):
  network = _network(name)
  config = SHUFFLENET_NARROW if which == 'narrow' else _configs(network)[which]
  module = network.slim_module(config)
  variables = _random_variables(module, network.input_shape)
  images = np.random.default_rng(1).normal(size=(6,) + network.input_shape).astype(np.float32)
  want = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images))

  described = deploy.write_artifacts(str(tmp_path), module, variables, network.input_shape,
                                     images)
  check = described['onnx']['check']
  assert check['agree'] and check['images'] == 6 and check['top1_agreement'] == 1.0, check
  program = deploy.load_jax_program(str(tmp_path))
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(np.asarray(program.call(images)), want, atol=1e-4 * scale)
  # another batch size than the one checked: the batch dimension is free in both
  np.testing.assert_allclose(np.asarray(program.call(images[:1])), want[:1], atol=1e-4 * scale)
  session = deploy.onnxruntime_session(
      (tmp_path / deploy.ONNX_FILE).read_bytes())
  for batch in (images, images[:1]):
    got = session.run(None, {onnx_graph.INPUT_NAME: batch})[0]
    np.testing.assert_allclose(got, want[:len(batch)], atol=1e-4 * scale)

  graph = onnx.load(str(tmp_path / deploy.ONNX_FILE)).graph
  ops = collections.Counter(n.op_type for n in graph.node)
  # BatchNorm folded into the convolutions: no conv output meets a constant in an arithmetic op
  # (the pooling net's hard swish and softplus add constants to BatchNorm outputs themselves)
  conv_outputs = {n.output[0] for n in graph.node if n.op_type == 'Conv'}
  weights = {w.name for w in graph.initializer}
  unfolded = [n.name for n in graph.node if n.op_type in ('Add', 'Sub', 'Mul', 'Div')
              and set(n.input) & conv_outputs and set(n.input) & weights]
  assert 'BatchNormalization' not in ops and (not unfolded or name == 'pooling_net'), (
      unfolded, ops)
  convs = sum(1 for layer in network.layers if layer.kind != 'dense')
  assert ops['Conv'] == convs, (ops, convs)
  assert ops['Transpose'] <= 2, ops  # NHWC in, NCHW inside


def test_jax_program_runs_in_a_fresh_process_without_the_package(tmp_path):
  network = _network('plain_cnn')
  config = network.channel_space().min_config()
  module = network.slim_module(config)
  variables = _random_variables(module, network.input_shape)
  images = np.random.default_rng(2).normal(size=(3,) + network.input_shape).astype(np.float32)
  deploy.write_artifacts(str(tmp_path), module, variables, network.input_shape, images,
                         onnx='never')
  np.save(tmp_path / 'images.npy', images)
  script = (
      "import sys; sys.modules['autoslim_jax'] = None  # importing it would fail\n"
      'import jax, numpy as np\n'
      "program = jax.export.deserialize(bytearray(open('model.jax_exported', 'rb').read()))\n"
      "np.save('logits.npy', np.asarray(program.call(np.load('images.npy'))))\n")
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['JAX_PLATFORMS'] = 'cpu'
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  want = np.asarray(module.apply(variables, images, train=False))
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), want, rtol=1e-5, atol=1e-6)
  assert not (tmp_path / deploy.ONNX_FILE).exists()  # onnx='never'


def test_an_onnx_model_that_disagrees_is_refused_and_not_written(tmp_path, monkeypatch):
  network = _network('plain_cnn')
  module = network.slim_module(network.channel_space().min_config())
  variables = _random_variables(module, network.input_shape)
  images = np.random.default_rng(3).normal(size=(4,) + network.input_shape).astype(np.float32)
  monkeypatch.setattr(deploy, 'ONNX_TOLERANCE', -1.0)  # no difference is small enough
  with pytest.raises(ValueError, match=r'the ONNX model disagrees with the JAX program on 4 '
                                       r'test images .*top-1 agreement .*; not written'):
    deploy.write_artifacts(str(tmp_path), module, variables, network.input_shape, images)
  assert not (tmp_path / deploy.ONNX_FILE).exists()


def test_untranslatable_programs_name_the_primitive():
  with pytest.raises(onnx_graph.ConversionError, match="primitive 'cumsum'"):
    onnx_graph.to_onnx(lambda x: jnp.cumsum(x, axis=1).mean(axis=(1, 2)), (4, 4, 2))
  with pytest.raises(onnx_graph.ConversionError, match='do not depend on the images'):
    onnx_graph.to_onnx(lambda x: jnp.zeros((x.shape[0], 3)) * 0 + jnp.ones(3), (4, 4, 2))


class CumulativeNet(nn.Module):
  """A network with a primitive the ONNX translation lacks (a cumulative sum)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
    return nn.Dense(10)(jnp.cumsum(x, axis=1).mean(axis=(1, 2)))


def test_an_untranslatable_network_keeps_its_jax_program_or_is_refused(tmp_path):
  module = CumulativeNet()
  images = np.random.default_rng(4).normal(size=(2, 8, 8, 1)).astype(np.float32)
  variables = module.init(jax.random.key(0), images)
  described = deploy.write_artifacts(str(tmp_path / 'auto'), module, variables, (8, 8, 1),
                                     images)
  assert described['onnx']['file'] is None
  assert "not translatable: the primitive 'cumsum'" in described['onnx']['why']
  assert (tmp_path / 'auto' / deploy.JAX_PROGRAM_FILE).exists()
  assert not (tmp_path / 'auto' / deploy.ONNX_FILE).exists()
  with pytest.raises(onnx_graph.ConversionError, match="primitive 'cumsum'"):
    deploy.write_artifacts(str(tmp_path / 'always'), module, variables, (8, 8, 1), images,
                           onnx='always')


def test_missing_onnxruntime_is_a_one_line_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as if not installed
  assert not deploy.onnx_available()
  with pytest.raises(ImportError, match=r"config.export.onnx='always' needs onnx and "
                                        r"onnxruntime, which are not installed: pip install"):
    deploy.write_artifacts(str(tmp_path), None, None, (8, 8, 1), np.zeros((1, 8, 8, 1)),
                           onnx='always')
  from autoslim_jax import latency  # pylint: disable=g-import-not-at-top
  with pytest.raises(ImportError, match="the latency backend 'onnxruntime' needs onnx"):
    latency.LatencyMeter('mobilenet_v2', {}, backend='onnxruntime')
  # auto: the JAX program only, and model.json says why
  network = _network('plain_cnn')
  module = network.slim_module(network.channel_space().min_config())
  variables = _random_variables(module, network.input_shape)
  described = deploy.write_artifacts(str(tmp_path), module, variables, network.input_shape,
                                     np.zeros((2,) + network.input_shape, np.float32))
  assert described['onnx'] == {'file': None, 'why': "not installed: pip install -e '.[onnx]' "
                                                     '(onnx and onnxruntime)'}
  assert (tmp_path / deploy.JAX_PROGRAM_FILE).exists()


def test_bad_export_and_latency_settings_are_refused():
  from autoslim_jax import defaults, latency  # pylint: disable=g-import-not-at-top
  config = defaults.get_default_config()
  config.export.onnx = 'yes'
  with pytest.raises(ValueError, match="config.export.onnx must be 'auto', 'always' or 'never', "
                                       "got 'yes'"):
    defaults.check_config(config)
  config = defaults.get_default_config()
  config.search.latency_backend = 'onnx'
  with pytest.raises(ValueError, match="latency_backend must be one of .*got 'onnx'"):
    defaults.check_config(config)
  config = defaults.get_default_config()
  config.export.platforms = ('cuda',)
  with pytest.raises(ValueError, match=r"export.platforms=\('cuda',\): give some of cpu, cuda, "
                                       r"rocm, tpu, cpu included"):
    defaults.check_config(config)
  with pytest.raises(ValueError, match=r"unknown latency backend 'onnxrt' \(did you mean "
                                       r"'onnxruntime'\?\)"):
    latency.LatencyMeter('mobilenet_v2', {}, backend='onnxrt')
  two_cpus = len(os.sched_getaffinity(0)) >= 2
  with pytest.raises(ValueError, match='the jax backend measures one thread' if two_cpus
                     else 'latency threads must be an integer from 1'):
    latency.LatencyMeter('mobilenet_v2', {}, threads=2)
  network = _network('plain_cnn')
  unit = network.unit_names[0]
  with pytest.raises(ValueError, match=f"unit '{unit}': channel count 1000 is out of range"):
    export.export_slim(network, {}, dict(network.channel_space().max_config(), **{unit: 1000}))


def test_model_json_describes_the_input(tmp_path):
  description = deploy.input_description((8, 8, 1), (0.5,), (0.25,))
  assert description == {'shape': ['batch', 8, 8, 1], 'dtype': 'float32', 'layout': 'NHWC',
                         'normalization': '(pixel / 255 - mean) / std', 'mean': [0.5],
                         'std': [0.25]}
  json.dumps(description)
