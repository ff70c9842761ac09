import json

import jax
import numpy as np
import pytest

from autoslim_jax import channels
from autoslim_jax.channels import ChannelSpace, make_divisible


@pytest.mark.parametrize('value,expected', [(32 * 1.5, 48), (16 * 0.35, 8), (24 * 0.75, 24),
                                            (36, 40), (1280 * 1.5, 1920), (3, 8), (100, 104)])
def test_make_divisible_matches_mobilenet_rounding(value, expected):
  assert make_divisible(value) == expected


def test_k_min_from_min_width():
  assert channels.min_group_index(10, 0.15 / 1.5) == 1
  assert channels.min_group_index(20, 0.15) == 3
  assert channels.min_group_index(12, 1.0) == 12
  # The narrowest choice must be exactly the min width: 12 groups cannot give 0.15x of 1.5x.
  with pytest.raises(ValueError, match=r'12 channel groups and a min width of 0.1 of the max '
                     r'width disagree: the narrowest choice would be 1.2 groups.*groups 10, 20'):
    channels.min_group_index(12, 0.15 / 1.5)


def test_choices_are_group_multiples_capped_at_max():
  space = ChannelSpace({'a': 48, 'b': 20, 'c': 1920}, groups=12, min_ratio=2 / 12)
  assert space['a'].choices == (8, 16, 24, 32, 40, 48)
  assert space['b'].choices[-1] == 20 and max(space['b'].choices) == 20
  assert space['c'].choices == tuple(160 * k for k in range(2, 13))
  assert space.max_config() == {'a': 48, 'b': 20, 'c': 1920}
  assert space.min_config() == {'a': 8, 'b': 8, 'c': 320}


def test_validate_names_the_bad_entry_and_the_range():
  space = ChannelSpace({'stem': 48, 'last': 1920})
  with pytest.raises(ValueError, match=r"unit 'last'.*2000 is out of range; valid is 1..1920"):
    space.validate({'stem': 8, 'last': 2000})
  with pytest.raises(ValueError, match=r"unit 'stem'.*0 is out of range; valid is 1..48"):
    space.validate({'stem': 0, 'last': 8})
  with pytest.raises(ValueError, match=r"unit 'stem'.*8.5 is not an integer"):
    space.validate({'stem': 8.5, 'last': 8})
  with pytest.raises(ValueError, match=r"unknown unit\(s\) \['lst'\]"):
    space.validate({'stem': 8, 'lst': 8})
  with pytest.raises(ValueError, match=r"missing unit\(s\) \['last'\]"):
    space.validate({'stem': 8})


def test_json_round_trip_is_stable_and_readable():
  space = ChannelSpace({'stem': 48, 'stage1': 24, 'last': 1920})
  config = {'last': 640, 'stem': 16, 'stage1': 24}
  text = space.to_json(config)
  assert list(json.loads(text)) == ['stem', 'stage1', 'last']  # unit order, not insertion order
  assert space.from_json(text) == config
  assert space.to_json(space.from_json(text)) == text
  with pytest.raises(ValueError, match='not valid JSON'):
    space.from_json('{stem: 8')


def test_sampling_is_jittable_uniform_and_within_choices():
  space = ChannelSpace({'a': 48, 'b': 96, 'c': 16}, groups=12, min_ratio=2 / 12)
  sample = jax.jit(jax.vmap(space.sample))
  drawn = sample(jax.random.split(jax.random.key(0), 6000))
  for unit in space.units:
    values, counts = np.unique(np.asarray(drawn[unit.name]), return_counts=True)
    assert tuple(values) == unit.choices  # every choice reachable, nothing else
    expected = 6000 / len(unit.choices)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
  # Same key, same config: a restarted run redraws the same widths.
  first = space.sample(jax.random.key(7))
  again = space.sample(jax.random.key(7))
  assert {k: int(v) for k, v in first.items()} == {k: int(v) for k, v in again.items()}


def test_masks_keep_the_lower_channels():
  space = ChannelSpace({'a': 16})
  mask = np.asarray(space.masks({'a': 8})['a'])
  assert mask.tolist() == [True] * 8 + [False] * 8


def test_official_list_round_trip_and_errors():
  space = ChannelSpace({'stem': 48, 'stage1': 24, 'exp': 144})
  layout = ('stem', 'stage1', 'exp', 'stage1', channels.CLASSES)
  config = channels.from_channel_num_list([16, 8, 96, 8, 10], layout, space, num_classes=10)
  assert config == {'stem': 16, 'stage1': 8, 'exp': 96}
  assert channels.to_channel_num_list(config, layout, 10) == [16, 8, 96, 8, 10]
  with pytest.raises(ValueError, match='has 4 entries; this network takes 5'):
    channels.from_channel_num_list([16, 8, 96, 8], layout, space, 10)
  with pytest.raises(ValueError, match=r"entry 3 \(unit 'stage1'\) is 16, but entry 1"):
    channels.from_channel_num_list([16, 8, 96, 16, 10], layout, space, 10)
  with pytest.raises(ValueError, match='entry 4 is the number of classes: got 1000'):
    channels.from_channel_num_list([16, 8, 96, 8, 1000], layout, space, 10)
  with pytest.raises(ValueError, match=r"entry 2 \(unit 'exp'\).*not an integer"):
    channels.from_channel_num_list([16, 8, '96', 8, 10], layout, space, 10)
