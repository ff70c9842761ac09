r"""Quickstart: a tiny slimmable MobileNet v2 on the embedded digits data set.

Command:  python -m autoslim_jax.main --config=configs/quickstart.py --workdir=/tmp/autoslim_quick
Hardware: any CPU (no accelerator, no data download: the 1,797 8x8 digits ship in scikit-learn).
Run time: about a minute on a 2-core machine, most of it compilation.
Expected: the supernet's resources at max and min width, its held-out accuracy for max, min and
  random configs from one compiled function (about chance, 10%: supernet training arrives with
  the training issue), and slim exports of the max and min networks in WORKDIR/export whose
  logits equal the masked supernet's.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = 'mobilenet_v2'
  # Factory arguments of the network (autoslim_jax.models): the CIFAR layout (total stride 8)
  # fits 8x8 digits; width_mult is the supernet's max width.
  config.model_kwargs = ml_collections.ConfigDict(dict(
      layout='cifar', width_mult=0.5, image_size=8, in_channels=1, num_classes=10))
  config.dataset = 'digits'
  config.heldout_size = 300
  # Channel groups per unit (G) and the narrowest width, as a multiplier of the 1.0x network:
  # k_min = ceil(G * min_width / width_mult).
  config.groups = 12
  config.min_width = 0.15
  config.eval_batch_size = 300
  config.num_random_configs = 8  # random configs scored besides max and min
  config.seed = 0
  return config
