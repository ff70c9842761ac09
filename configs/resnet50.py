r"""ImageNet supernet: ResNet-50 at 1.0x max width, as in the paper (section 4).

Command:  python -m autoslim_jax.main --config=configs/resnet50.py --workdir=gs://BUCKET/r50 \
            --config.dataset.data_dir=gs://BUCKET/tfds
          ImageNet must be prepared by tfds once, as array_record files, from its manual
          download (README, Data): tfds build imagenet2012 --file_format=array_record ...
          An ImageNet folder (train/CLASS/*.JPEG, val/CLASS/*.JPEG) works too:
            --config.dataset.name=folder --config.dataset.path=PATH
          The published networks alone, without supernet and search:
            --config.retrain.published='("570M", "1G", "2G", "3G")' --config.stages=retrain,export
Hardware: a TPU v3-32 / v4-32 pod slice or 8 A100/H100 GPUs (batch 2048 over the devices).
Run time: supernet 50 epochs = 30,050 steps of 4 sub-networks at 224x224; search about 350
  greedy steps of up to 37 candidates on 50,000 images; retraining 8 networks x 100 epochs. Not
  yet measured.
Expected (paper, Table 1): 570M / 1.0G / 2.0G / 3.0G-MACs networks with 27.8 / 26.0 / 24.4 /
  24.0% top-1 error after retraining (uniform 0.25x / 0.5x / 0.75x / 1.0x: 35.0 / 27.9 / 25.1 /
  23.9%). Not yet reproduced here.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared ImageNet recipe
import mbv2  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  config = mbv2.get_config()  # the paper's ImageNet supernet recipe
  config.model = 'resnet50'
  # Widths: 1.0x max, 20 groups of 0.05x: k_min = 3, the narrowest width exactly the paper's
  # 0.15x (10 groups would need k_min = 1.5).
  config.model_kwargs = ml_collections.ConfigDict(dict(layout='imagenet', width_mult=1.0))
  config.groups = 20
  config.search.targets.macs = (570e6, 1e9, 2e9, 3e9)
  # Retraining: the ResNet recipe (paper, section 4): 100 epochs, SGD nesterov lr 0.1 at batch
  # 256 (scaled with the batch), x0.1 at epochs 30, 60 and 90, weight decay 1e-4.
  config.retrain.num_epochs = 100.0
  config.retrain.base_learning_rate = 0.1
  config.retrain.base_batch_size = 256
  config.retrain.schedule = 'step'
  config.retrain.compute_dtype = 'bfloat16'
  return config
