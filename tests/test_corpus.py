"""A corpus of plain Flax networks written as people write them (tests/corpus_*.py), each
through the package: the units tracing finds; MACs, params and memory equal to a count by hand
(at max width and at one narrow config); params equal to the size of the Flax params collection
(max width) and of the slim export's (narrow config); the masked network equal to the slim one
at the narrow config in training and inference mode; or the exact refusal, naming the layer.
Three of them run through the whole command-line pipeline (issue 27)."""

import json
import os

import jax
import numpy as np
import pytest

from autoslim_jax import export
from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax import profile
from autoslim_jax import resources
from autoslim_jax import tracing
from conftest import SHORT_SCHEDULE, run
from test_plain_network import assert_masked_equals_slim, randomized

HERE = os.path.dirname(os.path.abspath(__file__))


def spec(name):
  file, function = name.split(':')
  return f'{HERE}/corpus_{file}.py:{function}'


# ----------------------------------------------------------------------------------------------
# The counts by hand. Each layer is (MACs, params, output feature map elements) at the config
# ``c`` (unit -> channels); a BatchNorm is (0, scale + bias, 0). Images are 8x8x1, 10 classes.
# conv(k, cin, cout, area): k*k*cin*cout*area MACs, k*k*cin*cout weights (+ cout bias),
# cout*area outputs; a depthwise conv k*k*channels*area MACs, k*k*channels weights.


def conv(k, cin, cout, area, bias=False):
  return (k * k * cin * cout * area, k * k * cin * cout + (cout if bias else 0), cout * area)


def depthwise(k, channels, area):
  return (k * k * channels * area, k * k * channels, channels * area)


def bn(channels):
  return (0, 2 * channels, 0)


def dense(cin, cout):
  return (cin * cout, cin * cout + cout, cout)


def resnet_layers(c):
  s, a, c1, d = c['stem'], c['block1/conv1'], c['block2/conv1'], c['block2/conv2']
  return [conv(3, 1, s, 64), bn(s),                       # stem, stem_bn
          conv(3, s, a, 64), bn(a), conv(3, a, s, 64), bn(s),  # block1 (identity shortcut)
          conv(3, s, c1, 16), bn(c1), conv(3, c1, d, 16), bn(d),  # block2, stride 2
          conv(1, s, d, 16), bn(d),                       # block2/proj: the shapes differ
          dense(d, 10)]


def preact_layers(c):
  s, a, d, c1 = c['stem'], c['block1/conv1'], c['block2/shortcut'], c['block2/conv1']
  return [conv(3, 1, s, 64),
          bn(s), conv(3, s, a, 64), bn(a), conv(3, a, s, 64),  # block1: bn1 reads the stem
          bn(s),  # block2/bn1 reads block1's residual sum (missed before the fix)
          conv(1, s, d, 16), conv(3, s, c1, 16), bn(c1), conv(3, c1, d, 16),
          bn(d),  # final_bn reads block2's residual sum (missed before the fix)
          dense(d, 10)]


def densenet_layers(c):
  s, b0, g0 = c['conv0'], c['layers_0/conv1'], c['layers_0/conv2']
  b1, g1, t = c['layers_1/conv1'], c['layers_1/conv2'], c['layers_2/conv']
  b3, g3 = c['layers_3/conv1'], c['layers_3/conv2']
  return [conv(3, 1, s, 64),
          bn(s), conv(1, s, b0, 64), bn(b0), conv(3, b0, g0, 64),  # layers_0 -> s + g0
          bn(s + g0), conv(1, s + g0, b1, 64), bn(b1), conv(3, b1, g1, 64),  # -> s + g0 + g1
          bn(s + g0 + g1), conv(1, s + g0 + g1, t, 64),  # transition, then 2x2 pooling
          bn(t), conv(1, t, b3, 16), bn(b3), conv(3, b3, g3, 16),  # layers_3 -> t + g3
          bn(t + g3), dense(t + g3, 10)]


def ghostnet_layers(c):
  s, p, q = c['stem'], c['ghost1/Conv_0'], c['ghost2/Conv_0']
  return [conv(3, 1, s, 64), bn(s),
          conv(1, s, p, 64), bn(p), depthwise(3, p, 64), bn(p),  # ghost1: concat(p, p)
          depthwise(3, 2 * p, 16), bn(2 * p),  # down: a depthwise conv of the concatenation
          conv(1, 2 * p, q, 16), bn(q), depthwise(3, q, 16), bn(q),  # ghost2: concat(q, q)
          dense(2 * q, 10)]  # split into q and q, pooled, concatenated


def ghostnet_stem_layers(c):
  s, q = c['stem'], c['ghost2/Conv_0']
  return [conv(3, 1, 2 * s, 64), bn(2 * s),  # the stem writes ghost1's concatenation (s, s)
          conv(1, 2 * s, s, 64), bn(s), depthwise(3, s, 64), bn(s),  # ghost1, plus the stem
          depthwise(3, 2 * s, 16), bn(2 * s),
          conv(1, 2 * s, q, 16), bn(q), depthwise(3, q, 16), bn(q),
          dense(2 * q, 10)]


def shufflenet_layers(c):
  a, b = c['stem[0:8]'], c['stem[8:16]']  # the stem's halves: the first unit splits it
  u1, d1, u2, d2 = c['unit1/Conv_0'], c['unit1/Conv_2'], c['unit2/Conv_0'], c['unit2/Conv_2']
  return [conv(3, 1, a + b, 64), bn(a + b),
          conv(1, b, u1, 64), bn(u1), depthwise(3, u1, 64), bn(u1), conv(1, u1, d1, 64), bn(d1),
          # unit2 splits unit1's concatenation (a, d1) at its boundary: its right half is d1
          conv(1, d1, u2, 64), bn(u2), depthwise(3, u2, 64), bn(u2), conv(1, u2, d2, 64), bn(d2),
          dense(a + d2, 10)]


def efficientnet_layers(c):
  s, r1, e2, r2 = c['stem'], c['block1/se/reduce'], c['block2/expand'], c['block2/se/reduce']
  o, e3, r3, h = c['block2/project'], c['block3/expand'], c['block3/se/reduce'], c['head_conv']
  return [conv(3, 1, s, 64), bn(s),
          # block1 (expansion 1): depthwise, SE on 1x1, projection added to the stem
          depthwise(3, s, 64), bn(s), conv(1, s, r1, 1, True), conv(1, r1, s, 1, True),
          conv(1, s, s, 64), bn(s),
          # block2: expand, depthwise at stride 2, SE, project (no residual)
          conv(1, s, e2, 64), bn(e2), depthwise(3, e2, 16), bn(e2),
          conv(1, e2, r2, 1, True), conv(1, r2, e2, 1, True), conv(1, e2, o, 16), bn(o),
          # block3: the same at stride 1, added to block2's output
          conv(1, o, e3, 16), bn(e3), depthwise(3, e3, 16), bn(e3),
          conv(1, e3, r3, 1, True), conv(1, r3, e3, 1, True), conv(1, e3, o, 16), bn(o),
          conv(1, o, h, 16), bn(h), dense(h, 10)]


def by_hand(layers):
  macs, params, maps = (sum(column) for column in zip(*layers))
  return {'macs': macs, 'params': params, 'memory': params + maps}


# The ShuffleNet's, split with jnp.split or with slices: the same units and counts.
SHUFFLENET_COUNTS = (
    {'stem[0:8]': 8, 'stem[8:16]': 8, 'unit1/Conv_0': 8, 'unit1/Conv_2': 8,
     'unit2/Conv_0': 8, 'unit2/Conv_2': 8},
    {'stem[0:8]': 5, 'stem[8:16]': 3, 'unit1/Conv_0': 6, 'unit1/Conv_2': 4,
     'unit2/Conv_0': 7, 'unit2/Conv_2': 2},
    {'macs': 34_976, 'params': 842, 'memory': 4_948},
    {'macs': 17_542, 'params': 433, 'memory': 3_003})

# name -> (its layers by hand, the units with their max widths, a narrow config, the counts at
# max width and at the narrow config, written out).
CORPUS = {
    'resnet:resnet': (
        resnet_layers,
        {'stem': 8, 'block1/conv1': 8, 'block2/conv1': 16, 'block2/conv2': 16},
        {'stem': 5, 'block1/conv1': 3, 'block2/conv1': 7, 'block2/conv2': 10},
        {'macs': 135_840, 'params': 5_122, 'memory': 7_436},
        {'macs': 36_180, 'params': 1_500, 'memory': 2_774}),
    'preact:preact_resnet': (
        preact_layers,
        {'stem': 8, 'block1/conv1': 8, 'block2/shortcut': 16, 'block2/conv1': 16},
        {'stem': 5, 'block1/conv1': 3, 'block2/shortcut': 10, 'block2/conv1': 7},
        {'macs': 135_840, 'params': 5_090, 'memory': 7_404},
        {'macs': 36_180, 'params': 1_480, 'memory': 2_754}),
    'densenet:densenet_bc': (
        densenet_layers,
        {'conv0': 16, 'layers_0/conv1': 16, 'layers_0/conv2': 8, 'layers_1/conv1': 16,
         'layers_1/conv2': 8, 'layers_2/conv': 16, 'layers_3/conv1': 16, 'layers_3/conv2': 8},
        {'conv0': 9, 'layers_0/conv1': 5, 'layers_0/conv2': 3, 'layers_1/conv1': 7,
         'layers_1/conv2': 6, 'layers_2/conv': 11, 'layers_3/conv1': 4, 'layers_3/conv2': 5},
        {'macs': 253_168, 'params': 5_578, 'memory': 11_092},
        {'macs': 62_688, 'params': 1_479, 'memory': 4_257}),
    'ghostnet:ghostnet': (
        ghostnet_layers,
        {'stem': 8, 'ghost1/Conv_0': 8, 'ghost2/Conv_0': 16},
        {'stem': 5, 'ghost1/Conv_0': 3, 'ghost2/Conv_0': 10},
        {'macs': 22_336, 'params': 1_226, 'memory': 3_540},
        {'macs': 9_032, 'params': 575, 'memory': 1_705}),
    'ghostnet:ghostnet_stem_residual': (
        ghostnet_stem_layers,
        {'stem': 8, 'ghost2/Conv_0': 16},
        {'stem': 5, 'ghost2/Conv_0': 10},
        {'macs': 31_040, 'params': 1_378, 'memory': 4_204},
        {'macs': 16_520, 'params': 775, 'memory': 2_545}),
    'shufflenet:shufflenet': (shufflenet_layers,) + SHUFFLENET_COUNTS,
    'shufflenet:shufflenet_slices': (shufflenet_layers,) + SHUFFLENET_COUNTS,
    'efficientnet:efficientnet': (
        efficientnet_layers,
        {'stem': 8, 'block1/se/reduce': 4, 'block2/expand': 32, 'block2/se/reduce': 4,
         'block2/project': 16, 'block3/expand': 32, 'block3/se/reduce': 4, 'head_conv': 32},
        {'stem': 5, 'block1/se/reduce': 2, 'block2/expand': 20, 'block2/se/reduce': 3,
         'block2/project': 9, 'block3/expand': 14, 'block3/se/reduce': 1, 'head_conv': 24},
        {'macs': 72_576, 'params': 4_510, 'memory': 10_748},
        {'macs': 29_432, 'params': 1_882, 'memory': 5_617}),
}


@pytest.fixture(scope='module', params=sorted(CORPUS))
def corpus_case(request):
  network = models.create_network(spec(request.param), image_size=8, in_channels=1)
  return request.param, network


def count(tree) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def test_units_and_resources_equal_the_count_by_hand(corpus_case):
  name, network = corpus_case
  layers, units, narrow, at_max, at_narrow = CORPUS[name]
  assert network.max_widths == units
  model = resources.ResourceModel(network)
  assert by_hand(layers(units)) == at_max
  assert model(units) == at_max
  assert by_hand(layers(narrow)) == at_narrow
  assert model(narrow) == at_narrow
  # The per-layer table (profile --per_layer) sums to the MACs and the params, too: a
  # BatchNorm that follows no layer (pre-activation, DenseNet) has a row of its own.
  rows = profile.profile(spec(name), channels=narrow,
                         model_kwargs={'image_size': 8, 'in_channels': 1})['layers']
  assert sum(row['macs'] for row in rows) == at_narrow['macs']
  assert sum(row['params'] for row in rows) == at_narrow['params']


def test_params_are_the_flax_params_and_masked_equals_slim(corpus_case):
  """Params: the size of the max network's Flax params collection, and of the slim export's at
  the narrow config. Masked equals slim at the narrow config in both modes."""
  name, network = corpus_case
  _, _, narrow, at_max, at_narrow = CORPUS[name]
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = randomized(network.supernet().init(jax.random.key(0), x))
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 3.0 if p[-1].key == 'kernel' else v, variables)
  assert count(variables['params']) == at_max['params']
  _, slim_vars = plain_network.export_slim(network.module, network.traced, variables, narrow)
  assert count(slim_vars['params']) == at_narrow['params']
  assert_masked_equals_slim(network.module, network.traced, variables, [narrow], x)


# ----------------------------------------------------------------------------------------------
# Refusals: each names the layer and the reason (and the fix, where there is one).

REFUSED = {
    'resnet:resnet_pmap': (
        r"^model '.*corpus_resnet.py:resnet_pmap': stem_bn: nn.BatchNorm\(axis_name='batch'\) "
        r"reduces over a pmap axis that the package does not bind; remove axis_name: the "
        r"package already normalises over the global batch of every device$"),
    'efficientnet:efficientnet_drop_connect': (
        r"^model '.*': block1/drop_connect: dropout \(rate 0.2\) in training mode: random layers "
        r"are not supported yet \(the training steps pass no random keys\); remove it, or make "
        r"it deterministic$"),
    'efficientnet:efficientnet_rng': (
        r"^model '.*': EfficientNet asks for a random key in training mode \(dropout, stochastic "
        r"depth: block1 needs PRNG for \"dropout\".*random layers are not supported yet: remove "
        r"them$"),
    'convnext:convnext': (
        r"^model '.*': ConvNeXt/stem_norm: reduce_sum at .*corpus_convnext.py:\d+:\d+ "
        r"\(ConvNeXt.__call__\): reduces over the channel axis of unit 'stem'; the masked "
        r"network would not equal its slim export \(a LayerNorm, GroupNorm or RMSNorm "
        r"normalises each position over its channels.*use BatchNorm\)$"),
    'shufflenet:shufflenet_shuffled': (
        r"^model '.*': ShuffleNet: reshape at .*corpus_shufflenet.py:\d+:\d+ \(channel_shuffle\): "
        r"reshapes \(merges or splits\) the channel axis of unit 'stem\[0:8\]'; the masked "
        r"network would not equal its slim export$"),
    'regnet:regnet': (
        r"^model '.*': RegNetX/stage1/b: conv_general_dilated at .*corpus_regnet.py.*: layer "
        r"stage1/b: grouped conv \(feature_group_count=2, 16 input and 16 output channels\) is "
        r"neither a plain conv \(1 group\) nor depthwise .* it cannot be slimmed$"),
}


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_refusals_name_the_layer_and_the_reason(name):
  """Refused by create_network (tracing, then training_mode's check), shapes only."""
  with pytest.raises(tracing.TracingError, match=REFUSED[name]):
    models.create_network(spec(name), image_size=8, in_channels=1)


def test_efficientnet_drop_connect_inactive_in_inference():
  """Drop-connect written with ``deterministic=not train`` traces (the inference graph has no
  random op) and is only refused by the training-mode check: its units are the rate-0 net's."""
  module = models.get_factory(spec('efficientnet:efficientnet_drop_connect'))()
  traced = tracing.trace_network(module, (8, 8, 1))
  assert traced.max_widths == CORPUS['efficientnet:efficientnet'][1]


def test_ghostnet_shortcut_between_ghost_modules():
  """A residual joining two concatenations joins their segments pairwise: ghost1b's primary
  conv joins ghost1's unit, and masked equals slim."""
  network = models.create_network(spec('ghostnet:ghostnet_residual'), image_size=8,
                                  in_channels=1)
  assert {u.name: u.producers for u in network.traced.units} == {
      'stem': (('stem',),), 'ghost1/Conv_0': (('ghost1', 'Conv_0'), ('ghost1b', 'Conv_0')),
      'ghost2/Conv_0': (('ghost2', 'Conv_0'),)}
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = randomized(network.supernet().init(jax.random.key(0), x))
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 3.0 if p[-1].key == 'kernel' else v, variables)
  assert_masked_equals_slim(network.module, network.traced, variables,
                            [{'stem': 5, 'ghost1/Conv_0': 3, 'ghost2/Conv_0': 10}], x, (False,))


# ----------------------------------------------------------------------------------------------
# The whole pipeline, from the command line, on the embedded digits (tests/plain_cnn.py's
# config with the shortened quickstart's settings).


@pytest.mark.parametrize('name', ['preact:preact_resnet', 'ghostnet:ghostnet_stem_residual',
                                  'shufflenet:shufflenet_slices'])
def test_whole_pipeline_from_the_command_line(tmp_path, name):
  workdir = tmp_path / 'run'
  run('autoslim_jax.main', f'--config={HERE}/plain_cnn.py', f'--workdir={workdir}',
      f'--config.model={spec(name)}', *SHORT_SCHEDULE)
  results = json.loads((workdir / 'results.json').read_text())
  units = CORPUS[name][1]
  assert results['model'] == spec(name) and results['units'] == list(units)
  (target,) = results['targets']
  searched = target['autoslim']
  assert searched['macs'] <= target['value']
  layers = CORPUS[name][0]
  assert searched['macs'] == by_hand(layers(searched['channels']))['macs']
  module, variables, description = export.load_slim(searched['export'])
  assert description['channels'] == searched['channels']
  assert count(variables['params']) == by_hand(layers(searched['channels']))['params']
  logits = module.apply(variables, np.zeros((2, 8, 8, 1), np.float32), train=False)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
