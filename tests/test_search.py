"""Greedy slimming, BatchNorm calibration and the uniform baseline, on 8 fake devices."""

import json
import os
import re
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from autoslim_jax import defaults
from autoslim_jax import evaluate
from autoslim_jax import input_pipeline
from autoslim_jax import latency
from autoslim_jax import parallel
from autoslim_jax import plain_network
from autoslim_jax import resources
from autoslim_jax import retrain
from autoslim_jax import search
from conftest import REPO, backend_compiles, command_env

# Blocks with a residual connection: with their projection zeroed, their expansion width cannot
# change the network's output, so the greedy search must slim those units first.
IRRELEVANT_BLOCKS = (4, 8)
# Batch-statistics BatchNorm needs real batches: over 2 images per device it amplifies float
# rounding (variance of near-equal values) until vmapped and single evaluation disagree.
HELDOUT = 128


def _irrelevant_variables(network):
  variables = jax.device_get(network.init(jax.random.key(0)))
  for block in IRRELEVANT_BLOCKS:
    project = variables['params'][f'block{block}']['project']
    project['conv']['kernel'] = np.zeros_like(project['conv']['kernel'])
    project['bn']['bias'] = np.zeros_like(project['bn']['bias'])
  return variables


def _config(network_kwargs, targets=(), chunk_size=0):
  config = defaults.get_default_config()
  config.model_kwargs = ml_collections.ConfigDict(network_kwargs)
  config.search.targets.macs = tuple(targets)
  config.search.batch_size = HELDOUT
  config.search.chunk_size = chunk_size
  return config


@pytest.fixture(scope='module')
def setting(tiny_network):
  """A source whose held-out labels are the max network's own predictions: every unit that
  changes the logits flips some of them and loses accuracy; the irrelevant ones lose nothing."""
  variables = _irrelevant_variables(tiny_network)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (HELDOUT + 64, 8, 8, 3)).astype(np.uint8)
  arrays = {'x_train': images, 'y_train': np.zeros(len(images), np.int64),
            'x_test': images[:8], 'y_test': np.zeros(8, np.int64)}
  data_config = defaults.get_default_config().dataset
  data_config.heldout_size = HELDOUT
  source = input_pipeline.array_source('random', arrays, data_config)
  batch = next(input_pipeline.eval_batches(source, 'heldout', HELDOUT))
  space = tiny_network.channel_space()
  # As the search will see them: BatchNorm over the whole global batch, whatever the devices.
  logits = evaluate.logits_with_batch_stats(tiny_network.supernet(), variables, batch['image'],
                                            space.as_arrays(space.max_config()))
  # The batch holds the held-out examples in order (device d: the d-th slice).
  arrays['y_train'][:HELDOUT] = np.argmax(logits, -1)
  return variables, input_pipeline.array_source('random', arrays, data_config)


def _kwargs(network):
  return dict(layout='cifar', width_mult=0.5, image_size=8)


def test_chunked_vmapped_scores_equal_one_at_a_time(tiny_network, setting):
  variables, source = setting
  space = tiny_network.channel_space()
  mesh = parallel.make_mesh()
  scorer = evaluate.make_candidate_scorer(tiny_network.supernet(), mesh)
  batches = list(input_pipeline.eval_batches(source, 'heldout', 64))  # 2 batches of 64
  configs = [c for _, c in space.slimming_candidates(space.max_config())]
  # Some candidates far from the max config too.
  configs += [{**space.min_config(), 'last': 1280}, space.min_config()]
  replicated = parallel.replicate(variables, mesh)
  by_size = {size: evaluate.score_configs(scorer, replicated, batches, configs, space, size, mesh)
             for size in (1, 4, len(space.units))}
  one = by_size[1]
  assert all(s['count'] == HELDOUT for s in one)
  for size, scores in by_size.items():
    assert [s['correct'] for s in scores] == [s['correct'] for s in one], size
    np.testing.assert_allclose([s['loss'] for s in scores], [s['loss'] for s in one], rtol=1e-6)
    assert search.best_candidate(scores, 'accuracy') == search.best_candidate(one, 'accuracy')
  assert scorer._cache_size() == 3  # pylint: disable=protected-access  # one per chunk size
  # A later greedy step's candidates (other configs, fewer of them) reuse the compiled scorer.
  before = backend_compiles()
  later = [c for _, c in space.slimming_candidates(configs[-3])]
  evaluate.score_configs(scorer, replicated, batches, later, space, 4, mesh)
  assert backend_compiles() == before
  assert scorer._cache_size() == 3  # pylint: disable=protected-access


def _search(network, variables, source, workdir, **kwargs):
  config = _config(_kwargs(network), targets=kwargs.pop('targets', ()),
                   chunk_size=kwargs.pop('chunk_size', 0))
  return search.run_search(config, str(workdir), network, network.channel_space(), variables,
                           source, **kwargs)


@pytest.fixture(scope='module')
def straight_run(tiny_network, setting, tmp_path_factory):
  variables, source = setting
  workdir = tmp_path_factory.mktemp('search')
  model = resources.ResourceModel(tiny_network)
  space = tiny_network.channel_space()
  steps_to_clear = sum(len(space[f'block{b}_expand'].choices) - 1 for b in IRRELEVANT_BLOCKS)
  full = model(space.max_config())['macs']
  # Two targets: one reached right after slimming the irrelevant units, one a little later.
  after_irrelevant = dict(space.max_config())
  for block in IRRELEVANT_BLOCKS:
    after_irrelevant[f'block{block}_expand'] = space[f'block{block}_expand'].min_channels
  first_target = model(after_irrelevant)['macs'] + 1
  targets = (first_target, 0.85 * full)
  summary = _search(tiny_network, variables, source, workdir, targets=targets)
  return workdir, summary, steps_to_clear, targets


def test_search_slims_units_that_cannot_matter_first(straight_run):
  workdir, summary, _, _ = straight_run
  trajectory = search.read_trajectory(str(workdir))
  irrelevant = {f'block{b}_expand' for b in IRRELEVANT_BLOCKS}
  # Slimming them leaves the logits exactly as they were: same accuracy (100%: the labels are
  # the max network's predictions) and the very same loss.
  for before, step in zip(trajectory, trajectory[1:]):
    if step['unit'] in irrelevant:
      assert step['heldout_accuracy'] == 1.0
      assert step['heldout_loss'] == before['heldout_loss']
  # So both reach their narrowest width before any slimming that costs accuracy. (Units whose
  # removal flips no prediction but lowers the loss may legitimately come first.)
  first_drop = next(i for i, step in enumerate(trajectory) if step['heldout_accuracy'] < 1.0)
  space_min = {unit: min(step['channels'][unit] for step in trajectory) for unit in irrelevant}
  for unit in irrelevant:
    assert trajectory[first_drop - 1]['channels'][unit] == space_min[unit]
  assert sum(step['unit'] in irrelevant for step in trajectory[:first_drop]) == straight_run[2]
  assert summary['complete'] and summary['steps'] == len(trajectory) - 1


def test_each_target_records_the_first_config_under_it(straight_run):
  workdir, summary, steps_to_clear, targets = straight_run
  trajectory = search.read_trajectory(str(workdir))
  macs = [step['macs'] for step in trajectory]
  assert macs == sorted(macs, reverse=True)
  for record, value in zip(summary['targets'], sorted(targets, reverse=True)):
    index = record['step']
    assert macs[index] <= value < macs[index - 1]
    assert record['channels'] == trajectory[index]['channels']
    with open(workdir / 'targets' / f'{record["name"]}.json') as f:
      assert json.load(f)['macs'] == record['macs']
  # The search stops at the strictest target.
  assert len(trajectory) - 1 == summary['targets'][-1]['step']
  assert (workdir / 'trajectory.png').stat().st_size > 1000


def test_stopped_and_resumed_search_ends_with_the_same_trajectory(tiny_network, setting,
                                                                   straight_run, tmp_path):
  variables, source = setting
  straight_dir, _, _, targets = straight_run
  partial = _search(tiny_network, variables, source, tmp_path, targets=targets,
                    stop_after_step=3)
  assert partial == {'complete': False, 'steps': 3}
  assert search.read_summary(str(tmp_path)) is None
  _search(tiny_network, variables, source, tmp_path, targets=targets)
  strip = lambda steps: [{k: v for k, v in s.items() if k != 'seconds'} for s in steps]
  assert strip(search.read_trajectory(str(tmp_path))) == strip(
      search.read_trajectory(str(straight_dir)))


def test_chunks_are_balanced_over_the_calls_of_a_step(tiny_network, setting, straight_run,
                                                    tmp_path, monkeypatch):
  """25 candidates with room for 20 a call run as two calls of 13 (one padded), not 20 and a
  padded 20; the search chooses exactly as with every candidate in one call."""
  variables, source = setting
  straight_dir, _, _, targets = straight_run
  assert [search.balanced_chunk_size(25, most) for most in (25, 20, 13, 12, 8, 1)] == [
      25, 13, 13, 9, 7, 1]
  room_for_20 = int(20.5 * search.candidate_memory_bytes(tiny_network, 256)
                    / search.USABLE_MEMORY)
  assert search.automatic_chunk_size(tiny_network, 2048, 25, room_for_20, 8) == 13
  calls = []
  make_scorer = evaluate.make_candidate_scorer

  def recording_scorer(*args, **kwargs):
    scorer = make_scorer(*args, **kwargs)
    def score(variables, batch, configs):
      calls.append(len(next(iter(configs.values()))))
      return scorer(variables, batch, configs)
    return score

  monkeypatch.setattr(evaluate, 'make_candidate_scorer', recording_scorer)
  units = len(tiny_network.channel_space().units)
  assert units == 25
  _search(tiny_network, variables, source, tmp_path, targets=targets, chunk_size=20,
          stop_after_step=2)
  # One held-out batch: the max config (one padded call), then two calls a step.
  assert calls == [13] * 5
  balanced = search.read_trajectory(str(tmp_path))
  straight = search.read_trajectory(str(straight_dir))[:3]
  exact = lambda steps: [{k: v for k, v in s.items() if k not in ('seconds', 'heldout_loss')}
                         for s in steps]
  assert exact(balanced) == exact(straight)  # the losses: to float rounding (chunk sizes)
  np.testing.assert_allclose([s['heldout_loss'] for s in balanced],
                             [s['heldout_loss'] for s in straight], rtol=1e-6)


def test_latency_is_measured_once_per_step_on_the_slim_network(tiny_network, setting,
                                                                tmp_path):
  """In onnxruntime (the jax backend: tests/test_latency.py)."""
  variables, source = setting
  config = _config(_kwargs(tiny_network))
  config.search.measure_latency = True
  config.search.latency_backend = 'onnxruntime'
  with latency.LatencyMeter('mobilenet_v2', _kwargs(tiny_network), warmup=1, repeats=3,
                            backend=config.search.latency_backend) as meter:
    search.run_search(config, str(tmp_path), tiny_network, tiny_network.channel_space(),
                      variables, source, latency_fn=meter.measure, stop_after_step=2)
  trajectory = search.read_trajectory(str(tmp_path))
  assert len(trajectory) == 3
  assert all(step['latency_ms'] > 0 for step in trajectory)
  assert meter.worker_info['backend'] == 'onnxruntime'


def test_unreachable_targets_are_refused_before_searching(tiny_network, setting, tmp_path):
  variables, source = setting
  model = resources.ResourceModel(tiny_network)
  space = tiny_network.channel_space()
  low, high = model(space.min_config())['macs'], model(space.max_config())['macs']
  for value in (low - 1, high + 1):
    with pytest.raises(ValueError, match=r'outside the reachable range.*give a value in \['):
      _search(tiny_network, variables, source, tmp_path, targets=(value,))
  assert not os.path.exists(tmp_path / search.TRAJECTORY_FILE)


def test_search_refuses_a_workdir_searched_with_other_settings(tiny_network, setting,
                                                                straight_run):
  variables, source = setting
  workdir, _, _, _ = straight_run
  config = _config(_kwargs(tiny_network), targets=(1e6,))
  config.search.score = 'loss'
  with pytest.raises(ValueError, match='other settings.*score'):
    search.run_search(config, str(workdir), tiny_network, tiny_network.channel_space(),
                      variables, source)


def test_calibration_gives_the_population_statistics_of_every_layer_input(tiny_network,
                                                                         tiny_variables):
  """Calibrated statistics are numpy's mean and variance of each BatchNorm input over all N
  images: for the stem, of the conv of the images computed directly; for every layer, of its
  inputs captured batch by batch (each global batch normalised by its own statistics)."""
  mesh = parallel.make_mesh()
  space = tiny_network.channel_space()
  module = tiny_network.supernet()
  config = space.as_arrays(tiny_network.uniform_config(0.35))
  rng = np.random.default_rng(1)
  # Batches of different means: the population variance includes the spread between them.
  batches = [{'image': rng.normal(shift, 2.0, size=(64, 8, 8, 3)).astype(np.float32),
              'label': np.zeros(64, np.int64), 'mask': np.ones(64, np.float32)}
             for shift in (0.0, 1.0, 3.0)]
  calibrated = evaluate.calibrate_batch_stats(evaluate.make_calibration_step(module, mesh),
                                              tiny_variables, batches, config, mesh)
  images = np.concatenate([b['image'] for b in batches]).astype(np.float64)
  kernel = np.asarray(tiny_variables['params']['stem']['conv']['kernel'], np.float64)
  stem = np.asarray(jax.lax.conv_general_dilated(
      images, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision='highest'))
  np.testing.assert_allclose(calibrated['stem']['bn']['mean'], stem.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(calibrated['stem']['bn']['var'], stem.var((0, 1, 2)), rtol=1e-4)

  inputs = {}

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      inputs.setdefault(tuple(context.module.path), []).append(np.asarray(args[0], np.float64))
    return next_fun(*args, **kwargs)

  for batch in batches:
    with nn.intercept_methods(capture):
      module.apply(tiny_variables, batch['image'], config, train=True, mutable=['batch_stats'])
  flat = flax.traverse_util.flatten_dict(calibrated)
  assert len(inputs) * 2 == len(flat)
  for path, captured in inputs.items():
    x = np.concatenate(captured)
    np.testing.assert_allclose(flat[path + ('mean',)], x.mean((0, 1, 2)), rtol=1e-4, atol=1e-5,
                               err_msg=str(path))
    np.testing.assert_allclose(flat[path + ('var',)], x.var((0, 1, 2)), rtol=1e-3, atol=1e-5,
                               err_msg=str(path))


def test_uniform_baseline_width_is_the_closest_within_budget(tiny_network):
  model = resources.ResourceModel(tiny_network)
  macs_of = lambda width: model(tiny_network.uniform_config(width))['macs']
  for searched in (0.6 * macs_of(0.5), 0.3 * macs_of(0.5)):
    width = retrain.uniform_width_for(tiny_network, 'macs', searched)
    assert macs_of(width) <= searched
    # No width between it and the max gives MACs closer to (and not above) the searched net's.
    for other in np.linspace(width, 0.5, 40):
      assert macs_of(other) > searched or macs_of(other) <= macs_of(width)
    with_room = retrain.uniform_width_for(tiny_network, 'macs', searched, budget=2 * searched)
    assert abs(macs_of(with_room) - searched) <= abs(macs_of(width) - searched)
  with pytest.raises(ValueError, match='no uniform'):
    retrain.uniform_width_for(tiny_network, 'macs', 10)


def test_latency_baseline_times_each_net_once_and_falls_back_to_the_narrowest(tiny_network):
  """Measured latency is noisy: each uniform net is timed once (the bisection never sees two
  values of one net), the baseline keeps its time, and when even the narrowest uniform net
  measured slower than the searched one, it is the baseline (not an error after the search)."""
  model = resources.ResourceModel(tiny_network)
  calls = []

  def measure(config):  # grows with the MACs, as a time would; never under 1 ms
    calls.append(tuple(sorted(config.items())))
    return 1.0 + model(config)['macs'] / 1e6

  narrowest = tiny_network.uniform_config(1e-3)
  record = {'name': 'latency_ms_0.5', 'metric': 'latency_ms', 'value': 0.5, 'latency_ms': 0.5}
  baseline = retrain.baseline_for(tiny_network, record, measure)
  assert baseline['channels'] == narrowest
  assert baseline['latency_ms'] == measure(narrowest)
  calls.clear()
  middle = measure(tiny_network.uniform_config(0.3))
  calls.clear()
  record = dict(record, value=middle, latency_ms=middle)
  baseline = retrain.baseline_for(tiny_network, record, measure)
  assert baseline['latency_ms'] <= middle and len(calls) == len(set(calls))
  with pytest.raises(ValueError, match='no uniform'):  # counted resources: still an error
    retrain.uniform_width_for(tiny_network, 'macs', 10)


def test_params_target_baseline_is_matched_on_params(tiny_network):
  """A params target's uniform baseline: params at or under the target, the closest such
  width (not the one matching the searched net's MACs)."""
  model = resources.ResourceModel(tiny_network)
  of = lambda width: model(tiny_network.uniform_config(width))
  searched = tiny_network.channel_space().sample(jax.random.key(3))
  searched = {k: int(v) for k, v in searched.items()}
  record = {'name': 'params_x', 'metric': 'params', 'value': of(0.4)['params'], **model(searched)}
  baseline = retrain.baseline_for(tiny_network, record)
  params = of(baseline['width_mult'])['params']
  assert params <= record['value']
  widths = np.linspace(0.01, 0.5, 400)
  within = [of(w)['params'] for w in widths if of(w)['params'] <= record['value']]
  best = min(within, key=lambda p: abs(p - record['params']))
  assert abs(params - record['params']) <= abs(best - record['params'])
  # Matched on MACs instead, the width would differ.
  macs_width = retrain.uniform_width_for(tiny_network, 'macs', record['macs'], record['macs'])
  assert of(macs_width)['params'] != params


def test_search_and_calibration_are_the_same_on_1_and_8_devices(tmp_path):
  """The BatchNorm batch is the global batch whatever the device count: in float64 the greedy
  search takes the same steps with the same held-out scores, and calibration gives the same
  statistics, on 1 device and on 8."""
  results = {}
  for devices in (1, 8):
    env = dict(command_env(), JAX_ENABLE_X64='1',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    out = tmp_path / f'{devices}.json'
    subprocess.run([sys.executable, os.path.join('tests', 'search_on_devices.py'),
                    str(tmp_path / f'search{devices}'), str(out)], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=600)
    results[devices] = json.loads(out.read_text())
  one, eight = results[1], results[8]
  assert (one['devices'], eight['devices']) == (1, 8)
  assert len(one['steps']) >= 3
  assert [s[0] for s in one['steps']] == [s[0] for s in eight['steps']]
  assert [s[1] for s in one['steps']] == [s[1] for s in eight['steps']]  # accuracies
  # Losses: the networks return float32 logits, so they agree to float32 rounding.
  np.testing.assert_allclose([s[2] for s in one['steps']], [s[2] for s in eight['steps']],
                             rtol=1e-6)
  assert one['target'] == eight['target']
  assert one['calibrated'].keys() == eight['calibrated'].keys()
  for key, value in one['calibrated'].items():
    np.testing.assert_allclose(eight['calibrated'][key], value, rtol=1e-9, atol=1e-12,
                               err_msg=key)


def test_automatic_chunk_size_fits_the_device_memory_or_refuses(tiny_network):
  """search.chunk_size 0: as many candidates as fit in a device's memory; on a CPU (no memory
  figure) all of a step; refused with what would fit when not even one does."""
  assert search.automatic_chunk_size(tiny_network, 2048, 25) == 25  # CPU: host memory
  one = search.candidate_memory_bytes(tiny_network, 256) / search.USABLE_MEMORY
  assert search.automatic_chunk_size(tiny_network, 2048, 25, int(3.5 * one), 8) == 3
  assert search.automatic_chunk_size(tiny_network, 2048, 25, int(100 * one), 8) == 25
  with pytest.raises(ValueError, match=r'search.batch_size 2048 on 1 device\(s\): one candidate '
                     r'needs about .* GiB.*use search.batch_size <= (\d+) or more devices') as e:
    search.automatic_chunk_size(tiny_network, 2048, 25, int(4 * one), 1)
  fits = int(re.search(r'batch_size <= (\d+)', str(e.value)).group(1))
  assert 1024 <= fits < 2048  # the weights' copy is small beside 1,024 images' feature maps
  assert search.automatic_chunk_size(tiny_network, fits, 25, int(4 * one), 1) == 1
  with pytest.raises(ValueError, match='one candidate needs'):
    search.automatic_chunk_size(tiny_network, fits + 1, 25, int(4 * one), 1)


def test_automatic_chunk_size_fits_what_xla_needed_on_an_h200():
  """The first accelerator run (runs/accelerator_h200.md): XLA needed 109.44 GiB to score 25
  candidates of the CIFAR MobileNet v2 1.5x net at 1,000 images on one H200, whose allocator
  holds 105.71 GiB. The automatic chunk must stay under that (CPU's factor chose all 25)."""
  from autoslim_jax import models  # pylint: disable=g-import-not-at-top
  network = models.create_network('mobilenet_v2', layout='cifar', width_mult=1.5,
                                   image_size=32)
  pool = int(105.71 * 2**30)
  chunk = search.automatic_chunk_size(network, 1000, 25, pool, 1)
  assert 1 <= chunk < 25
  assert chunk * 109.44 / 25 * 2**30 <= pool


def _scorer_memory_per_candidate(network, images: int) -> float:
  """XLA's own memory analysis of the compiled candidate scorer: the temporary bytes one more
  candidate in a chunk adds (chunks of 1 and 3, shapes only)."""
  supernet, space = network.supernet(), network.channel_space()
  shape = tuple(network.input_shape)
  variables = jax.eval_shape(lambda: supernet.init(
      jax.random.key(0), jax.numpy.zeros((2,) + shape), space.max_config()))
  batch = {'image': jax.ShapeDtypeStruct((images,) + shape, np.float32),
           'label': jax.ShapeDtypeStruct((images,), np.int32),
           'mask': jax.ShapeDtypeStruct((images,), np.float32)}
  scorer = evaluate.make_candidate_scorer(supernet)
  temp = {}
  for chunk in (1, 3):
    configs = {unit: jax.ShapeDtypeStruct((chunk,), np.int32) for unit in space.unit_names}
    temp[chunk] = scorer.lower(variables, batch, configs).compile().memory_analysis(
        ).temp_size_in_bytes
  return (temp[3] - temp[1]) / 2


def test_candidate_memory_covers_what_xla_needs_for_a_densenet():
  """Issue 27, point 5: a DenseNet's largest maps are its concatenations, no layer's output.
  The memory model counts them (and each candidate's masked weights): XLA:CPU's analysis of the
  compiled scorer fits under it; counting the largest layer output alone, as before, fell short
  of it by more than 2x (so a DenseNet could run out of an accelerator's memory)."""
  import corpus_densenet  # pylint: disable=g-import-not-at-top
  network = plain_network.PlainNetwork('densenet', corpus_densenet.DenseNetBC(blocks=(8,)),
                                       (16, 16, 3))
  images = 32
  needed = _scorer_memory_per_candidate(network, images)
  predicted = search.candidate_memory_bytes(network, images)
  assert needed <= predicted <= 3 * needed, (needed, predicted)
  largest_layer = max(l.out_channels * l.out_height * l.out_width for l in network.layers)
  assert search.largest_feature_map(network) >= 80 * 16 * 16  # 16 + 8 x 8 channels concatenated
  assert 2 * search.CANDIDATE_MEMORY_FACTOR * images * largest_layer * 4 < needed
