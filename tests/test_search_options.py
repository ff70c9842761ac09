"""Search options that only a search run exercises: latency, params and memory targets,
``search.score='loss'`` and ``search.num_images``, all in one greedy search of a tiny network
(one compiled scorer for every check), in-process: the command line adds nothing to them.

The latency meter is the package's ``LatencyMeter`` with its measurement replaced by a
deterministic fake (MACs and params, not a clock), so the real search code runs, the trajectory is
reproducible, and every call to the meter is counted.
"""

import contextlib
import json

import jax
import numpy as np
import pytest

from autoslim_jax import defaults
from autoslim_jax import evaluate
from autoslim_jax import input_pipeline
from autoslim_jax import latency
from autoslim_jax import resources
from autoslim_jax import retrain
from autoslim_jax import search

HELDOUT = 192
BATCH = 64
# Not a multiple of the batch: the last of its 2 batches is part padding, which must not count.
NUM_IMAGES = 100
# Each target a few greedy steps below the max config (on the development machine: latency at
# step 4, memory at 5, params at 7), so the search takes several steps.
PARAMS_FRACTION = 0.95
MEMORY_FRACTION = 0.975
LATENCY_FRACTION = 0.985


def fake_latency_ms(resource_model, channels):
  """Grows with MACs and params, as a measured latency would, but deterministic and unlike
  either, so a record read from the wrong column shows."""
  counts = resource_model(channels)
  return 0.5 + counts['macs'] / 1e6 + counts['params'] / 1e5


@pytest.fixture(scope='module')
def options_run(tiny_network, tiny_variables, tmp_path_factory):
  """One search with params, memory and latency targets, score 'loss' and num_images, recording
  every call to the latency meter and every candidate score the search computed."""
  network = tiny_network
  space = network.channel_space()
  model = resources.ResourceModel(network)
  at_max = model(space.max_config())
  max_latency = fake_latency_ms(model, space.max_config())

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (HELDOUT + 64, 8, 8, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, len(images))
  arrays = {'x_train': images, 'y_train': labels, 'x_test': images[:8], 'y_test': labels[:8]}
  data_config = defaults.get_default_config().dataset
  data_config.heldout_size = HELDOUT
  source = input_pipeline.array_source('random', arrays, data_config)

  config = defaults.get_default_config()
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.5, image_size=8))
  config.search.targets.params = (PARAMS_FRACTION * at_max['params'],)
  config.search.targets.memory = (MEMORY_FRACTION * at_max['memory'],)
  config.search.targets.latency_ms = (LATENCY_FRACTION * max_latency,)
  config.search.score = 'loss'
  config.search.num_images = NUM_IMAGES
  config.search.batch_size = BATCH

  meter_calls = []  # (config measured, whether inside the uniform baseline's bisection)
  in_baseline = [False]
  scored = []  # per score_configs call: (configs, their scores, number of batches)

  def measure(self, channels):
    del self
    meter_calls.append((dict(channels), in_baseline[0]))
    return fake_latency_ms(model, channels)

  real_baseline_for = retrain.baseline_for

  def baseline_for(*args, **kwargs):
    in_baseline[0] = True
    try:
      return real_baseline_for(*args, **kwargs)
    finally:
      in_baseline[0] = False

  real_score_configs = evaluate.score_configs

  def score_configs(scorer, variables, batches, configs, *args):
    batches = list(batches)
    scores = real_score_configs(scorer, variables, batches, configs, *args)
    scored.append(([dict(c) for c in configs], scores, len(batches)))
    return scores

  workdir = tmp_path_factory.mktemp('search_options')
  with contextlib.ExitStack() as stack:
    patch = stack.enter_context(pytest.MonkeyPatch.context())
    patch.setattr(latency.LatencyMeter, 'measure', measure)
    patch.setattr(retrain, 'baseline_for', baseline_for)
    patch.setattr(evaluate, 'score_configs', score_configs)
    meter = stack.enter_context(latency.LatencyMeter('mobilenet_v2',
                                                     config.model_kwargs.to_dict()))
    summary = search.run_search(config, str(workdir), network, space,
                                jax.device_get(tiny_variables), source, latency_fn=meter.measure)
    assert meter.pid is None  # the fake measured: no worker started
  return dict(network=network, space=space, model=model, config=config, workdir=workdir,
              summary=summary, trajectory=search.read_trajectory(str(workdir)),
              meter_calls=meter_calls, scored=scored)


def test_latency_meter_measures_the_range_then_once_per_greedy_step(options_run):
  """The range check measures the max and the min config; each greedy step then measures only
  the config it chose (never its other candidates), and the target's uniform baseline is one
  bisection over uniform widths, after the last step."""
  run = options_run
  trajectory, space, model = run['trajectory'], run['space'], run['model']
  steps = len(trajectory) - 1
  assert steps >= 3
  # Every step has many candidates: a meter called for each would show in the count below.
  assert all(step['candidates'] > 3 for step in trajectory[1:])
  search_calls = [channels for channels, in_baseline in run['meter_calls'] if not in_baseline]
  assert search_calls == ([space.max_config(), space.min_config()]
                          + [step['channels'] for step in trajectory[1:]])
  baseline_calls = [channels for channels, in_baseline in run['meter_calls'] if in_baseline]
  assert 0 < len(baseline_calls) <= retrain.LATENCY_BISECTION_STEPS + 4
  assert run['meter_calls'][-len(baseline_calls):] == [(c, True) for c in baseline_calls]
  for step in trajectory:
    assert step['latency_ms'] == fake_latency_ms(model, step['channels'])


def _first_under(values, limit):
  """Index of the first value at or under ``limit``; None if none is."""
  return next((i for i, value in enumerate(values) if value <= limit), None)


@pytest.mark.parametrize('metric', ['params', 'memory', 'latency_ms'])
def test_target_records_the_first_config_at_or_under_it(options_run, metric):
  """Each target's record is the first config along the greedy path whose own metric fits it
  (params and memory counted by the resource model, latency as the meter measured it); the
  search ends at the last target reached."""
  run = options_run
  trajectory, model = run['trajectory'], run['model']
  (value,) = run['config'].search.targets[metric]
  if metric == 'latency_ms':
    path = [fake_latency_ms(model, step['channels']) for step in trajectory]
  else:
    path = [model(step['channels'])[metric] for step in trajectory]
  assert [step[metric] for step in trajectory] == path
  assert sorted(r['metric'] for r in run['summary']['targets']) == ['latency_ms', 'memory',
                                                                     'params']
  index = _first_under(path, value)
  assert index is not None and index >= 1  # so the step before it, which did not fit, exists
  (record,) = [r for r in run['summary']['targets'] if r['metric'] == metric]
  assert record['value'] == value
  assert record['step'] == index and path[index - 1] > value
  assert record['channels'] == trajectory[index]['channels']
  assert record[metric] == path[index]
  with open(run['workdir'] / 'targets' / f'{record["name"]}.json') as f:
    assert json.load(f)['channels'] == record['channels']
  last = max(_first_under([step[m] for step in trajectory], run['config'].search.targets[m][0])
             for m in ('params', 'memory', 'latency_ms'))
  assert len(trajectory) - 1 == last
  if metric == 'latency_ms':
    baseline = record['uniform_baseline']
    assert fake_latency_ms(model, baseline['channels']) <= value
    assert baseline['channels'] == run['network'].uniform_config(baseline['width_mult'])


def test_score_loss_keeps_the_lowest_loss_candidate(options_run):
  """search.score='loss': every step keeps the candidate of the lowest held-out loss, also where
  the most accurate candidate is another one (so ranking by accuracy would fail here)."""
  run = options_run
  trajectory, scored = run['trajectory'], run['scored']
  assert len(scored) == len(trajectory)  # the max config, then one call per step
  differs = 0
  for step, (configs, scores, _) in zip(trajectory[1:], scored[1:]):
    losses = [s['loss'] for s in scores]
    lowest = int(np.argmin(losses))
    assert step['channels'] == configs[lowest]
    assert step['heldout_loss'] == losses[lowest]
    differs += search.best_candidate(scores, 'accuracy') != lowest
  assert differs >= 1


def test_num_images_scores_exactly_that_many_heldout_images(options_run):
  """search.num_images=100 of 192 held-out images, in batches of 64: two batches, 100 images
  counted for every candidate (the padding of the second batch not counted)."""
  run = options_run
  for configs, scores, num_batches in run['scored']:
    assert num_batches == 2
    assert [s['count'] for s in scores] == [NUM_IMAGES] * len(configs)


def test_a_latency_target_missed_by_noise_ends_with_the_closest_config(
    options_run, tiny_variables, tmp_path):
  """A latency target just above the min config's first measurement passes the range check;
  when the measurements of the greedy steps come out higher (as a clock's can), the search slims
  to the min config without meeting it. It ends with a message naming the closest step and the
  value to give, and a rerun on the same workdir ends with the same message (before: TypeError
  at the end of the search and of every resume). Two channel choices a unit: a short search."""
  network, model = options_run['network'], options_run['model']
  space = network.channel_space(groups=2, min_ratio=0.5)
  calls = []

  def drifting_latency_ms(channels):  # the range check's two calls, then 1 ms slower
    calls.append(channels)
    return fake_latency_ms(model, channels) + (1.0 if len(calls) > 2 else 0.0)

  config = defaults.get_default_config()
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.5, image_size=8))
  config.search.targets.latency_ms = (fake_latency_ms(model, space.min_config()) + 0.5,)
  config.search.num_images = NUM_IMAGES
  config.search.batch_size = BATCH
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (HELDOUT + 64, 8, 8, 3)).astype(np.uint8)
  arrays = {'x_train': images, 'y_train': rng.integers(0, 10, len(images)),
            'x_test': images[:8], 'y_test': np.zeros(8, np.int64)}
  data_config = defaults.get_default_config().dataset
  data_config.heldout_size = HELDOUT
  source = input_pipeline.array_source('random', arrays, data_config)
  variables = jax.device_get(tiny_variables)
  for attempt in ('first', 'resumed'):
    calls.clear()
    with pytest.raises(ValueError, match=r'latency_ms_.* was not reached: .* the closest step, '
                       r'\d+, has latency_ms [\d.]+ .*give a value of at least') as error:
      search.run_search(config, str(tmp_path), network, space, variables, source,
                        latency_fn=drifting_latency_ms)
    trajectory = search.read_trajectory(str(tmp_path))
    assert trajectory[-1]['channels'] == space.min_config(), attempt
    closest = min(range(len(trajectory)), key=lambda i: trajectory[i]['latency_ms'])
    assert f'the closest step, {closest}, has latency_ms {trajectory[closest]["latency_ms"]:g}' \
        in str(error.value), attempt
  assert search.read_summary(str(tmp_path)) is None
