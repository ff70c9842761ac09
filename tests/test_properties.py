"""Properties over random configs of every network (hypothesis)."""

import functools

import jax
import numpy as np
from hypothesis import given, settings, strategies as st

from autoslim_jax import export
from autoslim_jax import models
from autoslim_jax.resources import ResourceModel

# Every model at its paper width, ImageNet layout: resources and configs need no compilation.
PAPER_WIDTH = {'mobilenet_v1': 1.5, 'mobilenet_v2': 1.5, 'mnasnet': 1.5, 'resnet50': 1.0}


@functools.lru_cache(maxsize=None)
def _network(model):
  network = models.create_network(model, width_mult=PAPER_WIDTH[model])
  return network, network.channel_space(), ResourceModel(network)


@st.composite
def model_and_config(draw, models_=tuple(PAPER_WIDTH)):
  model = draw(st.sampled_from(models_))
  _, space, _ = _network(model)
  config = {u.name: draw(st.sampled_from(u.choices)) for u in space.units}
  return model, config


@settings(max_examples=60, deadline=None)
@given(model_and_config())
def test_config_serialisations_round_trip(model_config):
  model, config = model_config
  network, space, _ = _network(model)
  assert space.from_json(space.to_json(config)) == config
  assert network.config_from_list(network.config_to_list(config)) == config


@settings(max_examples=60, deadline=None)
@given(model_and_config(), st.data())
def test_removing_a_group_never_adds_macs_params_or_memory(model_config, data):
  model, config = model_config
  _, space, resource_model = _network(model)
  slimmable = [u for u in space.units if config[u.name] > u.min_channels]
  if not slimmable:
    return
  unit = data.draw(st.sampled_from(slimmable))
  slimmer = dict(config)
  slimmer[unit.name] = unit.choices[unit.choices.index(config[unit.name]) - 1]
  before, after = resource_model(config), resource_model(slimmer)
  assert after['macs'] < before['macs']
  assert after['params'] < before['params']
  assert after['memory'] < before['memory']


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(sorted(PAPER_WIDTH)), st.integers(0, 2**31 - 1))
def test_sampled_configs_are_within_each_units_choices(model, seed):
  _, space, _ = _network(model)
  configs = _jitted_sampler(model)(jax.random.split(jax.random.key(seed), 16))
  for unit in space.units:
    assert set(np.asarray(configs[unit.name]).tolist()) <= set(unit.choices)


@functools.lru_cache(maxsize=None)
def _jitted_sampler(model):
  _, space, _ = _network(model)
  return jax.jit(jax.vmap(space.sample))


@settings(max_examples=2, deadline=None)
@given(st.data())
def test_slim_export_equals_the_masked_network(zoo_network, zoo_variables, data):
  """For each model of the zoo (tiny), random configs: the physically slim network equals the
  masked one (BatchNorm running statistics included: zoo_variables has non-trivial ones)."""
  space = zoo_network.channel_space()
  config = {u.name: data.draw(st.sampled_from(u.choices), label=u.name) for u in space.units}
  images = jax.random.normal(jax.random.key(0), (2,) + zoo_network.input_shape)
  masked = _masked_forward(zoo_network)(zoo_variables, images, space.as_arrays(config))
  module, slim_vars = export.export_slim(zoo_network, zoo_variables, config)
  slim = jax.jit(lambda v, x: module.apply(v, x, train=False))(slim_vars, images)
  np.testing.assert_allclose(slim, masked, rtol=1e-5, atol=1e-5)
  # physically slim: every kernel has exactly the config's channels, and the parameter count is
  # the resource model's
  for layer in zoo_network.layers:
    node = slim_vars['params']
    for name in layer.path:
      node = node[name]
    kernel = node['dense' if layer.kind == 'dense' else 'conv']['kernel']
    assert kernel.shape[-1] == (config[layer.out_unit] if layer.out_unit else layer.out_channels)
  assert export.count_params(slim_vars['params']) == ResourceModel(zoo_network)(config)['params']


@functools.lru_cache(maxsize=None)
def _masked_forward(network):
  return jax.jit(lambda v, x, c: network.supernet().apply(v, x, c, train=False))
