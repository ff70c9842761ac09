"""Slim export: supernet variables + a config -> a plain, physically slim network.

Each layer keeps its lower-index channels (the active ones under the config's masks): conv
kernels are cut to [:, :, :in, :out], depthwise kernels to [..., :channels], dense kernels to
[:in, :out], and biases, BatchNorm scales, offsets and running statistics to [:out]. The slim
module is the same network built at the config's widths and run without masks, so its outputs
equal the masked supernet's. A plain module's network (``plain_network.PlainNetwork``) is cut by
the slices its traced units control instead.

``save_slim`` writes a directory a program can reload with ``load_slim``: ``model.json`` (the
network, its factory arguments, the channels and resources) and ``variables.msgpack``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from autoslim_jax import files
from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax.models.base import LayerRecord, Network

MODEL_FILE = 'model.json'
VARIABLES_FILE = 'variables.msgpack'


def slice_leaf(name: str, value, layer: LayerRecord, cin: int, cout: int):
  """The part of one variable of ``layer`` that the slim layer keeps."""
  if name == 'kernel' and value.ndim == 4:
    return value[..., :cout] if layer.kind == 'depthwise' else value[:, :, :cin, :cout]
  if name == 'kernel' and value.ndim == 2:
    return value[:cin, :cout]
  if value.ndim == 1:  # bias, BatchNorm scale / bias / mean / var
    return value[:cout]
  raise ValueError(f'do not know how to slim variable {name!r} of shape {value.shape} in layer '
                   f'{"/".join(layer.path)}')


def slim_variables(network: Network, variables: Mapping[str, Any], config: Mapping[str, int]
                   ) -> dict:
  """Cuts supernet ``variables`` (params, batch_stats, ...) down to ``config``'s channels."""
  config = network.channel_space().validate(config)
  if isinstance(network, plain_network.PlainNetwork):  # its variables are any module's
    return plain_network.slim_variables(network.traced, variables, config)
  owners = {layer.path: layer for layer in network.layers}
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables))
  sliced = {}
  for key, value in flat.items():
    # key = (collection, *layer path, submodule, leaf name), e.g. ('params', 'block3',
    # 'project', 'conv', 'kernel').
    layer = owners.get(tuple(key[1:-2]))
    if layer is None:
      raise ValueError(f'variable {"/".join(key)} belongs to no SlimConv/SlimDense layer, so it '
                       'cannot be slimmed; build every layer with weights from autoslim_jax.layers')
    cin = layer.in_channels if layer.in_unit is None else config[layer.in_unit]
    cout = layer.out_channels if layer.out_unit is None else config[layer.out_unit]
    sliced[key] = slice_leaf(key[-1], value, layer, cin, cout)
  return traverse_util.unflatten_dict(sliced)


def export_slim(network: Network, variables: Mapping[str, Any], config: Mapping[str, int]
                ) -> tuple[nn.Module, dict]:
  """The slim module for ``config`` and its variables; run it with ``config=None``."""
  module = network.slim_module(config)
  sliced = slim_variables(network, variables, config)
  expected = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                            jnp.zeros((1,) + network.input_shape))
  got_shapes = jax.tree_util.tree_map(jnp.shape, sliced)
  want_shapes = jax.tree_util.tree_map(lambda s: s.shape, flax.core.unfreeze(expected))
  if got_shapes != want_shapes:
    raise ValueError(f'{network.name}: sliced variables do not fit the slim module; a layer '
                     'declares the wrong in_unit/out_unit')
  return module, sliced


def count_params(params: Mapping[str, Any]) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def save_slim(directory: str, network: Network, model_kwargs: Mapping[str, Any],
              config: Mapping[str, int], slim_vars: Mapping[str, Any],
              extra: Mapping[str, Any] | None = None) -> None:
  """Writes an exported slim network; ``model_kwargs`` rebuild ``network`` via the registry."""
  from autoslim_jax.resources import ResourceModel  # pylint: disable=g-import-not-at-top
  description = {
      'model': network.name,
      'model_kwargs': dict(model_kwargs),
      'mode_argument': network.mode_argument,
      'channels': network.channel_space().validate(config),
      'resources': ResourceModel(network)(config),
      **(extra or {}),
  }
  if network.official_layout is not None:
    description['channel_num_list'] = network.config_to_list(config)
  files.write_atomic(os.path.join(directory, VARIABLES_FILE),
                     flax.serialization.msgpack_serialize(jax.device_get(dict(slim_vars))))
  files.write_atomic(os.path.join(directory, MODEL_FILE),
                     json.dumps(description, indent=1).encode())


def network_mode_argument(description: Mapping[str, Any]) -> str:
  """The ``mode_argument`` of a ``model.json`` (written since 2026-12-07; '' before)."""
  return description.get('mode_argument', '')


def load_slim(directory: str) -> tuple[nn.Module, dict, dict]:
  """Reads ``save_slim``'s directory: (slim module, variables, description)."""
  model_path = os.path.join(directory, MODEL_FILE)
  if not files.exists(model_path):
    raise FileNotFoundError(f'no exported network in {directory!r}: {MODEL_FILE} is missing')
  description = files.read_json(model_path)
  network = models.create_network(description['model'], network_mode_argument(description),
                                  **description['model_kwargs'])
  slim_vars = flax.serialization.msgpack_restore(
      files.read_bytes(os.path.join(directory, VARIABLES_FILE)))
  return network.slim_module(description['channels']), slim_vars, description

