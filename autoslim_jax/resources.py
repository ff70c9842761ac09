"""Resources of a config as exact functions of its channel counts.

Definitions (design.md, section 2), counted on the physically slim network at batch 1:

- ``macs``: multiply-accumulates of conv and dense layers (BatchNorm, activations and additions
  excluded): the paper's "FLOPs".
- ``params``: every trainable parameter of the slim network: conv and dense weights and biases
  plus BatchNorm's scale and bias (its running statistics are not parameters). This is what
  PyTorch's ``sum(p.numel() for p in model.parameters())`` counts and what the published AutoSlim
  and MobileNet v2 figures use (conv + dense alone gives MobileNet v2 1.0x 3.47M instead of the
  published 3.5M, the CIFAR net 2.20M instead of 2.24M); tests/test_resources.py checks it. It
  equals the size of the slim Flax model's ``params`` collection.
  A traced plain network counts them from its variables (``Network.param_axes``: each
  variable's axes as unit segments), so every parameter is counted at every config whatever holds
  it: a BatchNorm that follows no layer (pre-activation, BN-ReLU-conv), one without scale or
  bias, a learned per-channel scale.
- ``memory``: the paper's "summary of all feature maps and weights", as a count of elements:
  ``params`` plus every conv and dense output feature map (the input image not counted). This
  reproduces the paper's Table 1 within 0.5% for MobileNet v2 (1.0x 10.2M, 0.75x 8.5M, AutoSlim
  207M/305M/505M 9.1M/10.9M/14.8M); counting the input image too would add 0.15M at 224x224.

Every term is a product of at most two channel counts, so the resources of many configs at once
are one gather and one matrix product: ``ResourceModel.batch`` evaluates thousands of configs per
millisecond-scale call, as the greedy search needs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from autoslim_jax.models.base import LayerRecord, Network

RESOURCES = ('macs', 'params', 'memory')


class ResourceModel:
  """Exact MACs, params and memory of any config of one network."""

  def __init__(self, network: Network):
    self.network = network
    self.unit_names = network.unit_names
    index = {name: i for i, name in enumerate(self.unit_names)}
    one = len(self.unit_names)  # index of a constant-1 column, for fixed sizes
    terms = {name: [] for name in RESOURCES}  # (column a, column b, coefficient)

    def channels(unit: str | None, fixed: int) -> tuple[int, int]:
      return (one, fixed) if unit is None else (index[unit], 1)

    # A traced network counts its params from its variables (every parameter, whatever layer
    # holds it); the zoo's from its layer records.
    param_axes = getattr(network, 'param_axes', None)
    for layer in network.layers:
      area = layer.out_height * layer.out_width
      k2 = layer.kernel_size ** 2
      segments = [channels(unit, size) for unit, size in _input_segments(network, layer)]
      if layer.kind == 'depthwise':  # one k x k filter per channel: its outputs are its inputs
        pairs = [(one, 1, b, cb) for b, cb in segments]
        outputs = segments
      else:  # a layer reading or writing a concatenation: one product term per segment pair
        outputs = [channels(unit, size) for unit, size in output_segments(network, layer)]
        pairs = [(a, ca, b, cb) for a, ca in segments for b, cb in outputs]
      for a, ca, b, cb in pairs:
        terms['params'].append((a, b, k2 * ca * cb))
        terms['macs'].append((a, b, k2 * ca * cb * area))
      for b, cb in outputs:
        if layer.has_bias:
          terms['params'].append((one, b, cb))
        if layer.batch_norm:  # scale and bias
          terms['params'].append((one, b, 2 * cb))
        terms['memory'].append((one, b, cb * area))  # the output feature map
    if param_axes is not None:
      terms['params'] = []
      for _, axes in param_axes:
        products = [(one, one, 1)]  # (column a, column b, coefficient)
        for axis in axes:
          products = [_times(term, column, n, one) for term in products
                      for column, n in (channels(unit, size) for unit, size in axis)]
        terms['params'] += products
    terms['memory'] += terms['params']
    self._terms = {
        name: (np.array([t[0] for t in ts]), np.array([t[1] for t in ts]),
               np.array([t[2] for t in ts], np.float64))
        for name, ts in terms.items()}

  def batch(self, channel_matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Resources of many configs: ``channel_matrix`` is [configs, units] in unit order."""
    matrix = np.asarray(channel_matrix, np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(self.unit_names):
      raise ValueError(f'channel matrix must be [configs, {len(self.unit_names)}], got '
                       f'{matrix.shape}')
    matrix = np.concatenate([matrix, np.ones((matrix.shape[0], 1))], axis=1)
    return {name: (matrix[:, a] * matrix[:, b]) @ coefficient
            for name, (a, b, coefficient) in self._terms.items()}

  def __call__(self, config: Mapping[str, int]) -> dict[str, int]:
    """Resources of one config (validated) as exact integers."""
    config = self.network.channel_space().validate(config)
    row = np.array([[config[n] for n in self.unit_names]])
    return {name: int(round(values[0])) for name, values in self.batch(row).items()}

  def of_configs(self, configs: Sequence[Mapping[str, int]]) -> dict[str, np.ndarray]:
    return self.batch(np.array([[c[n] for n in self.unit_names] for c in configs]))


def _times(term, column: int, n: int, one: int) -> tuple[int, int, int]:
  """A product term (column a, column b, coefficient) times ``n`` channels of ``column``."""
  a, b, c = term
  if column == one:
    return a, b, c * n
  if a == one:
    return column, b, c * n
  if b == one:
    return a, column, c * n
  raise ValueError('a parameter with channels of more than two units cannot be counted')


def _input_segments(network: Network, layer: LayerRecord):
  """A layer's input channels as (unit or None, channels) segments."""
  return network.input_segments.get(layer.path, ((layer.in_unit, layer.in_channels),))


def output_segments(network: Network, layer: LayerRecord):
  """A layer's output channels as (unit or None, channels) segments."""
  return network.output_segments.get(layer.path, ((layer.out_unit, layer.out_channels),))


def layer_resources(layer: LayerRecord, config: Mapping[str, int], network: Network
                    ) -> dict[str, int]:
  """MACs and params of one layer of ``network`` under ``config`` (for per-layer tables)."""
  def channels(segments):
    return sum(size if unit is None else config[unit] for unit, size in segments)
  cin = channels(_input_segments(network, layer))
  cout = channels(output_segments(network, layer))
  if layer.kind == 'depthwise':  # its outputs are its inputs (a concatenation's segments too)
    cout = cin
  per_output = layer.kernel_size ** 2 * (1 if layer.kind == 'depthwise' else cin)
  params = per_output * cout + (cout if layer.has_bias else 0) + (
      2 * cout if layer.batch_norm else 0)
  return {'in': cin, 'out': cout, 'macs': per_output * cout * layer.out_height * layer.out_width,
          'params': params}
