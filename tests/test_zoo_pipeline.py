"""Every network of the zoo through supernet training and greedy search on mock CIFAR-10 (its
own file so that the two test processes share the load)."""

import json
import os

import pytest
import tensorflow_datasets as tfds

from conftest import mock_cifar_config

from autoslim_jax import pipeline
from autoslim_jax import search
from autoslim_jax.resources import ResourceModel


ZOO_32 = {'mobilenet_v1': dict(width_mult=0.5), 'mobilenet_v2': dict(width_mult=0.5),
          'mnasnet': dict(width_mult=0.5), 'resnet50': dict(width_mult=0.25)}


@pytest.mark.parametrize('model', sorted(ZOO_32))
def test_supernet_steps_and_search_on_mock_cifar10(model, tmp_path):
  config = mock_cifar_config(model, ZOO_32[model])
  network, space = pipeline.build_network(config)
  max_macs = ResourceModel(network)(space.max_config())['macs']
  config.search.targets.macs = (0.99 * max_macs,)  # a few greedy steps
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    pipeline.run(config, str(tmp_path))
  assert len(os.listdir(tmp_path / 'supernet' / 'checkpoints')) == 1
  trajectory = search.read_trajectory(str(tmp_path / 'search'))
  assert len(trajectory) >= 2
  for before, after in zip(trajectory, trajectory[1:]):  # one unit loses one group per step
    changed = [u for u in space.unit_names if before['channels'][u] != after['channels'][u]]
    assert changed == [after['unit']]
    choices = space[after['unit']].choices
    assert choices.index(after['channels'][after['unit']]) == choices.index(
        before['channels'][after['unit']]) - 1
  with open(tmp_path / 'search' / 'search.json') as f:
    (target,) = json.load(f)['targets']
  assert target['macs'] <= 0.99 * max_macs
  # the searched net in the official channel_num_list layout reads back to the same config
  assert network.config_from_list(target['channel_num_list']) == target['channels']
