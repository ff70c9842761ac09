"""The AutoSlim networks the paper's authors published, as official ``channel_num_list`` lists.

Thirteen lists (upstream ``JiahuiYu/slimmable_networks``, ``apps/autoslim_*_train_val.yml``;
numbers only), each for the ImageNet network at the paper's supernet width (1.5x for the mobile
nets, 1.0x for ResNet-50), named by its MACs. ``published_macs`` / ``published_params`` are the
reference counts at 224x224, batch 1, in millions: conv + dense MACs, and parameters with
BatchNorm's scale and bias (``resources.py``); ``paper_memory`` the paper's Table 1 memory (all
feature maps and weights). The tests rebuild every list and check all three.

  from autoslim_jax import published
  network, channels = published.load('mobilenet_v2', '305M')
  python -m autoslim_jax.profile --model=resnet50 --published=2G
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from autoslim_jax import models


class PublishedNet(NamedTuple):
  published_macs: float  # millions
  published_params: float  # millions
  paper_memory: float  # millions of elements, the paper's Table 1
  channel_num_list: tuple[int, ...]


PUBLISHED = {
    'mobilenet_v1': {
        '150M': PublishedNet(149.8, 1.89, 4.2, (
            16, 32, 48, 48, 88, 88, 224, 176, 224, 368, 320, 224, 744, 744, 1000
        )),
        '325M': PublishedNet(324.8, 4.0, 6.8, (
            16, 32, 48, 64, 112, 184, 320, 368, 320, 416, 464, 560, 1128, 1128, 1000
        )),
        '572M': PublishedNet(572.1, 4.66, 9.5, (
            24, 64, 128, 144, 232, 232, 560, 464, 512, 464, 560, 560, 1128, 1128, 1000
        )),
    },
    'mobilenet_v2': {
        '207M': PublishedNet(206.8, 4.13, 9.1, (
            8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 48, 288, 48, 288, 48, 288, 48, 288,
            64, 432, 64, 432, 64, 648, 176, 720, 176, 720, 176, 1440, 280, 1920, 1000
        )),
        '305M': PublishedNet(305.1, 5.77, 10.9, (
            8, 8, 96, 16, 96, 16, 96, 24, 144, 24, 144, 24, 144, 56, 288, 56, 288, 56, 288, 56, 288,
            96, 432, 96, 432, 96, 864, 240, 1440, 240, 960, 240, 1440, 480, 1920, 1000
        )),
        '505M': PublishedNet(504.9, 6.5, 14.8, (
            32, 16, 144, 24, 176, 24, 192, 48, 240, 48, 144, 48, 264, 88, 288, 88, 336, 88, 432, 88,
            576, 144, 576, 144, 648, 144, 864, 240, 1440, 240, 1440, 240, 1440, 480, 1920, 1000
        )),
    },
    'mnasnet': {
        '217M': PublishedNet(217.2, 4.04, 7.5, (
            16, 8, 24, 16, 48, 16, 24, 16, 48, 32, 48, 32, 48, 32, 192, 56, 400, 56, 400, 56, 400,
            80, 432, 80, 648, 192, 864, 192, 864, 192, 864, 192, 1728, 280, 1280, 1000
        )),
        '315M': PublishedNet(315.3, 6.08, 10.3, (
            16, 8, 40, 24, 48, 24, 40, 24, 48, 40, 80, 40, 48, 40, 352, 64, 400, 64, 400, 64, 464,
            80, 432, 80, 792, 288, 864, 288, 864, 288, 1008, 288, 1728, 360, 1920, 1000
        )),
        '532M': PublishedNet(531.8, 8.34, 14.2, (
            16, 8, 64, 32, 56, 32, 72, 32, 104, 64, 128, 64, 96, 64, 384, 104, 528, 104, 464, 104,
            720, 128, 576, 128, 864, 288, 1584, 288, 1728, 288, 1728, 288, 1728, 480, 1920, 1000
        )),
    },
    'resnet50': {
        '570M': PublishedNet(570.0, 7.42, 11.5, (
            24, 72, 8, 16, 72, 16, 16, 72, 8, 8, 72, 240, 16, 24, 240, 16, 24, 240, 16, 16, 240, 16,
            24, 240, 704, 72, 72, 704, 48, 72, 704, 48, 72, 704, 72, 72, 704, 48, 48, 704, 48, 48,
            704, 1680, 280, 240, 1680, 120, 200, 1680, 280, 280, 1680, 1000
        )),
        '1G': PublishedNet(999.9, 13.34, 18.2, (
            32, 72, 16, 16, 72, 16, 16, 72, 8, 8, 72, 280, 24, 40, 280, 16, 24, 280, 16, 24, 280,
            24, 40, 280, 880, 72, 72, 880, 72, 96, 880, 72, 72, 880, 72, 72, 880, 48, 72, 880, 168,
            96, 880, 2016, 360, 280, 2016, 320, 360, 2016, 480, 440, 2016, 1000
        )),
        '2G': PublishedNet(2006.0, 20.61, 27.6, (
            40, 120, 16, 16, 120, 24, 24, 120, 16, 24, 120, 440, 48, 72, 440, 32, 48, 440, 40, 56,
            440, 64, 72, 440, 1024, 168, 168, 1024, 96, 144, 1024, 120, 168, 1024, 120, 144, 1024,
            120, 144, 1024, 256, 256, 1024, 2016, 512, 512, 2016, 480, 480, 2016, 512, 512, 2016,
            1000
        )),
        '3G': PublishedNet(3004.5, 23.19, 32.3, (
            48, 192, 16, 16, 192, 56, 56, 192, 24, 40, 192, 512, 88, 112, 512, 64, 104, 512, 104,
            112, 512, 80, 128, 512, 1024, 240, 216, 1024, 144, 216, 1024, 192, 192, 1024, 144, 240,
            1024, 240, 256, 1024, 256, 256, 1024, 2016, 512, 512, 2016, 480, 512, 2016, 512, 512,
            2016, 1000
        )),
    },}
# The supernet width the lists were searched in (and must fit).
SUPERNET_WIDTH = {'mobilenet_v1': 1.5, 'mobilenet_v2': 1.5, 'mnasnet': 1.5, 'resnet50': 1.0}


def names(model: str) -> list[str]:
  """The published networks of ``model``, e.g. ['207M', '305M', '505M']."""
  if model not in PUBLISHED:
    raise ValueError(f'no published AutoSlim networks for model {model!r}; there are some for '
                     f'{sorted(PUBLISHED)}')
  return list(PUBLISHED[model])


def get(model: str, name: str) -> PublishedNet:
  """The published network ``name`` of ``model`` (e.g. 'mobilenet_v2', '305M')."""
  available = names(model)
  if name not in PUBLISHED[model]:
    close = difflib.get_close_matches(name, available, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(f'no published AutoSlim-{model} {name!r}{hint}; published: {available}')
  return PUBLISHED[model][name]


def load(model: str, name: str, **model_kwargs) -> tuple[models.Network, dict[str, int]]:
  """The ImageNet network at the paper's supernet width and the published config in it.

  ``model_kwargs`` go to the model's factory (e.g. ``dtype``); the list must fit the network
  they build (1000 classes, widths up to the supernet's).
  """
  published_net = get(model, name)
  model_kwargs = {'width_mult': SUPERNET_WIDTH[model], **model_kwargs}
  network = models.create_network(model, **model_kwargs)
  return network, network.config_from_list(list(published_net.channel_num_list))
