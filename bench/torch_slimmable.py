"""A slimmable MobileNet v2 in PyTorch that slices its weights per width, for the benchmark.

The approach of the official AutoSlim code and of mmrazor: every layer keeps max-width weights
and, for a sub-network, runs on the leading ``[:out, :in]`` slice of them, so a narrow network
computes only its own channels. The architecture (blocks, strides, units and their max widths)
comes from ``autoslim_jax.models.mobilenet_v2`` so both implementations build the same network;
the computation is written here, independently of the JAX code. Losses, sandwich and optimizer
follow ``autoslim_jax.steps``: the max network learns from label-smoothed labels, the others
from its detached soft predictions; SGD with Nesterov momentum and weight decay on conv and
dense kernels except depthwise ones. BatchNorm's running statistics follow the max network.

PyTorch is an optional benchmark dependency (``pip install torch``); nothing in the package
imports this file.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SlicedConvBN(nn.Module):
  """Conv (optionally depthwise) -> BatchNorm -> optional ReLU6 on sliced max-width weights."""

  def __init__(self, in_channels: int, out_channels: int, in_unit: str | None, out_unit: str,
               kernel_size: int = 1, stride: int = 1, depthwise: bool = False,
               activation: bool = True):
    super().__init__()
    self.in_unit, self.out_unit = in_unit, out_unit
    self.stride, self.padding = stride, (kernel_size - 1) // 2
    self.depthwise, self.activation = depthwise, activation
    shape = (out_channels, 1 if depthwise else in_channels, kernel_size, kernel_size)
    self.weight = nn.Parameter(torch.empty(shape))
    nn.init.kaiming_normal_(self.weight, mode='fan_out', nonlinearity='relu')
    self.bn_weight = nn.Parameter(torch.ones(out_channels))
    self.bn_bias = nn.Parameter(torch.zeros(out_channels))
    self.register_buffer('running_mean', torch.zeros(out_channels))
    self.register_buffer('running_var', torch.ones(out_channels))

  def forward(self, x: torch.Tensor, config: Mapping[str, int], update_stats: bool):
    out = config[self.out_unit]
    if self.depthwise:
      weight = self.weight[:out]
      groups = out
    else:
      weight = self.weight[:out, :x.shape[1]]
      groups = 1
    x = F.conv2d(x, weight, stride=self.stride, padding=self.padding, groups=groups)
    # Sliced running statistics are views: updating them updates the max-width buffers.
    x = F.batch_norm(x, self.running_mean[:out] if update_stats else None,
                     self.running_var[:out] if update_stats else None,
                     self.bn_weight[:out], self.bn_bias[:out], training=True, momentum=0.1,
                     eps=1e-5)
    return F.relu6(x) if self.activation else x


class SlicedMobileNetV2(nn.Module):
  """MobileNet v2 at the max widths of ``unit_widths``, run at any config by slicing."""

  def __init__(self, unit_widths: Mapping[str, int], plan: Sequence[dict], stem_stride: int,
               num_classes: int):
    super().__init__()
    self.stem = SlicedConvBN(3, unit_widths['stem'], None, 'stem', 3, stem_stride)
    self.blocks = nn.ModuleList()
    self.residual = []
    for block in plan:
      hidden = block['expand_unit'] or block['in_unit']
      layers = nn.ModuleList()
      if block['expand_unit']:
        layers.append(SlicedConvBN(unit_widths[block['in_unit']], unit_widths[hidden],
                                   block['in_unit'], hidden))
      layers.append(SlicedConvBN(unit_widths[hidden], unit_widths[hidden], hidden, hidden,
                                 block['kernel_size'], block['stride'], depthwise=True))
      layers.append(SlicedConvBN(unit_widths[hidden], unit_widths[block['out_unit']], hidden,
                                 block['out_unit'], activation=False))
      self.blocks.append(layers)
      self.residual.append(block['in_unit'] == block['out_unit'])
    last_in = plan[-1]['out_unit']
    self.last = SlicedConvBN(unit_widths[last_in], unit_widths['last'], last_in, 'last')
    self.classifier_weight = nn.Parameter(torch.randn(num_classes, unit_widths['last']) * 0.01)
    self.classifier_bias = nn.Parameter(torch.zeros(num_classes))

  def forward(self, x: torch.Tensor, config: Mapping[str, int], update_stats: bool = False):
    x = self.stem(x, config, update_stats)
    for layers, residual in zip(self.blocks, self.residual):
      shortcut = x
      for layer in layers:
        x = layer(x, config, update_stats)
      if residual:
        x = x + shortcut
    x = self.last(x, config, update_stats)
    x = x.mean((2, 3))
    return F.linear(x, self.classifier_weight[:, :config['last']], self.classifier_bias)

  def parameter_groups(self, weight_decay: float) -> list[dict]:
    """Weight decay on conv and dense kernels except depthwise ones (as ``steps``)."""
    decayed, plain = [], []
    for module in self.modules():
      if isinstance(module, SlicedConvBN):
        (plain if module.depthwise else decayed).append(module.weight)
        plain += [module.bn_weight, module.bn_bias]
    decayed.append(self.classifier_weight)
    plain.append(self.classifier_bias)
    return [{'params': decayed, 'weight_decay': weight_decay},
            {'params': plain, 'weight_decay': 0.0}]


def load_flax_params(model: SlicedMobileNetV2, params: Mapping) -> None:
  """Copies the JAX supernet's ``params`` (``models.mobilenet_v2``'s tree) into ``model``."""
  def copy_conv(layer: SlicedConvBN, tree: Mapping) -> None:
    # Flax kernels are HWIO (depthwise: H, W, 1, C); PyTorch's OIHW (depthwise: C, 1, H, W).
    layer.weight.data.copy_(torch.from_numpy(np.array(tree['conv']['kernel'])).permute(
        3, 2, 0, 1))
    layer.bn_weight.data.copy_(torch.from_numpy(np.array(tree['bn']['scale'])))
    layer.bn_bias.data.copy_(torch.from_numpy(np.array(tree['bn']['bias'])))

  copy_conv(model.stem, params['stem'])
  for index, layers in enumerate(model.blocks):
    names = ['expand', 'depthwise', 'project'][-len(layers):]
    for layer, name in zip(layers, names):
      copy_conv(layer, params[f'block{index}'][name])
  copy_conv(model.last, params['last'])
  model.classifier_weight.data.copy_(
      torch.from_numpy(np.array(params['classifier']['dense']['kernel'])).T)
  model.classifier_bias.data.copy_(
      torch.from_numpy(np.array(params['classifier']['dense']['bias'])))


def sandwich_step(model: SlicedMobileNetV2, optimizer: torch.optim.Optimizer,
                  images: torch.Tensor, labels: torch.Tensor,
                  configs: Sequence[Mapping[str, int]], label_smoothing: float) -> float:
  """One sandwich step; ``configs[0]`` is the max network (the teacher). Returns the loss."""
  optimizer.zero_grad(set_to_none=True)
  logits = model(images, configs[0], update_stats=True)
  loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
  loss.backward()
  teacher = F.softmax(logits.detach(), -1)
  total = loss.detach()
  # Backward per member frees its activations at once (the official code does the same).
  for config in configs[1:]:
    student = model(images, config)
    distill = torch.sum(-teacher * F.log_softmax(student, -1), -1).mean()
    distill.backward()
    total = total + distill.detach()
  optimizer.step()
  total = float(total)  # one device-to-host sync per step
  if not math.isfinite(total):
    raise FloatingPointError(f'non-finite sandwich loss {total}')
  return total
