r"""ImageNet supernet: MNasNet (no squeeze-and-excite) at 1.5x max width, as in the paper.

Command:  python -m autoslim_jax.main --config=configs/mnasnet.py --workdir=gs://BUCKET/mnasnet \
            --config.dataset.data_dir=gs://BUCKET/tfds
          ImageNet must be prepared by tfds once, as array_record files, from its manual
          download (README, Data): tfds build imagenet2012 --file_format=array_record ...
          An ImageNet folder (train/CLASS/*.JPEG, val/CLASS/*.JPEG) works too:
            --config.dataset.name=folder --config.dataset.path=PATH
          The published networks alone, without supernet and search:
            --config.retrain.published='("217M", "315M", "532M")' --config.stages=retrain,export
Hardware: a TPU v3-32 / v4-32 pod slice or 8 A100/H100 GPUs (batch 2048 over the devices).
Run time: supernet 50 epochs = 30,050 steps of 4 sub-networks at 224x224; search about 250
  greedy steps of up to 25 candidates on 50,000 images; retraining 6 networks x 300 epochs. Not
  yet measured.
Expected (paper, Table 1): 217M / 315M / 532M-MACs networks with 26.8 / 25.4 / 24.6% top-1
  error after retraining (MNasNet 0.75x / 1.0x / 1.3x: 28.5 / 26.0 / 24.5%). Not yet reproduced
  here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared ImageNet recipe
import mbv2  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  config = mbv2.get_config()  # the paper's ImageNet recipe; only the network and budgets differ
  config.model = 'mnasnet'
  config.search.targets.macs = (217e6, 315e6, 532e6)
  return config
