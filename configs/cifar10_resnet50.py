r"""CIFAR-10 supernet: the CIFAR ResNet-50 at 1.0x max width (1298M MACs), with the
recipe of cifar10_mbv2.py.

Command:  python -m autoslim_jax.main --config=configs/cifar10_resnet50.py --workdir=WORKDIR
          (--config.dataset.name=npz --config.dataset.path=FILE.npz for arrays of your own)
Hardware: one GPU or a TPU v3-8/v4-8 (batch 256 splits over 1, 2, 4 or 8 devices). Not for a
  CPU: an epoch of the supernet takes tens of minutes on 2 cores.
Run time: supernet 50 epochs = 8,750 steps of 4 sub-networks; search to the smallest budget in
  greedy steps of up to 37 candidates on 5,000 images; retraining 6 networks x 200 epochs.
  Not yet measured.
Expected: AutoSlim nets at the MACs of the uniform 0.75x / 0.5x / 0.25x nets (730M / 325M / 81.4M),
  compared with those uniform nets under the same recipe. The paper reports CIFAR-10 only for
  MobileNet v2 (1.3-2.4 points lower top-1 error); no number here yet.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared CIFAR recipe
import cifar10_mbv2  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  config = cifar10_mbv2.get_config()
  config.model = 'resnet50'
  config.model_kwargs.width_mult = 1.0
  config.groups = 20  # k_min = 3: the narrowest width exactly 0.15x (10 groups: k_min 1.5)
  # ResNet-50's supernet is the 1.0x network itself (paper), so the budgets are narrower widths.
  config.search.targets.macs_of_width = (0.75, 0.5, 0.25)
  return config
