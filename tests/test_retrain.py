"""Retraining: the joint (one slimmable network over the searched configs) mode."""

import jax
import numpy as np

from autoslim_jax import defaults
from autoslim_jax import input_pipeline
from autoslim_jax import pipeline
from autoslim_jax import retrain


def test_joint_retraining_trains_every_searched_config_and_calibrates_each(tmp_path):
  config = defaults.get_default_config()
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.35, image_size=8, in_channels=1,
                                  num_classes=10))
  config.min_width = 0.175  # k_min = 5 of 10 groups (0.175 / 0.35 x 10)
  config.dataset.update(dict(name='digits', heldout_size=64, augmentation='none'))
  config.retrain.update(dict(mode='joint', batch_size=32, num_epochs=2 / 45,
                             base_learning_rate=0.02, base_batch_size=32, log_every_steps=1,
                             eval_batch_size=304))
  config.calibration.update(dict(num_images=64, batch_size=32))
  network, space = pipeline.build_network(config)
  source = input_pipeline.create_source(config.dataset)
  small = network.uniform_config(0.2)
  targets = [{'name': 'small', 'metric': 'macs', 'value': 1e9, 'channels': small, 'macs': 1},
             {'name': 'max', 'metric': 'macs', 'value': 1e9, 'channels': space.max_config(),
              'macs': 2}]
  config.retrain.uniform_baseline = False
  states = retrain.run_retrain(config, str(tmp_path), network, targets, source)
  state = states['autoslim']
  assert int(state.step) == 2
  # Both configs learned: the weights only the max config uses moved too.
  initial = network.init(jax.random.key(config.seed))
  unit = 'block16_expand'
  assert small[unit] < space.max_config()[unit]
  kernel = np.asarray(state.params['block16']['expand']['conv']['kernel'])
  start = np.asarray(initial['params']['block16']['expand']['conv']['kernel'])
  assert np.any(kernel[..., small[unit]:] != start[..., small[unit]:])
  assert np.any(kernel[..., :small[unit]] != start[..., :small[unit]])
  # The largest config teaches: it comes first whatever the order of the targets.
  assert retrain.joint_order(network, [small, space.max_config()]) == [1, 0]
  evaluator = pipeline.Evaluator(config, source)
  variables = retrain.trained_variables(state)
  for channels in (small, space.max_config()):
    calibrated, metrics = evaluator.calibrated_test(network.supernet(), variables,
                                                    space.as_arrays(channels))
    assert metrics['count'] == source.num_examples['test']
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(calibrated))
  # A finished run is restored, not retrained.
  again = retrain.run_retrain(config, str(tmp_path), network, targets, source, restore_only=True)
  assert int(again['autoslim'].step) == 2
