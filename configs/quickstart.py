r"""Quickstart: a small slimmable MobileNet v2 supernet on the embedded digits data set.

Command:  python -m autoslim_jax.main --config=configs/quickstart.py --workdir=/tmp/autoslim_quick
Hardware: any CPU; no accelerator and no download (the 1,797 8x8 digits ship in scikit-learn).
Run time: about 3 minutes on a 2-core machine (a third of it compilation).
Expected: the supernet trains 108 steps (batch 64, 6 epochs) with the sandwich rule; measured
  on the 2-core development machine: max network 45% held-out accuracy, min network 15%, random
  configs 15-18% (BatchNorm in batch-statistics mode). A smoke run, not a good supernet: the
  narrow sub-networks need a far longer schedule. Slim exports of the max and min networks land
  in WORKDIR/export, their logits equal to the masked supernet's. Rerunning the command resumes
  from WORKDIR/supernet/checkpoints (a finished run only rescores and exports).
"""

from autoslim_jax import defaults


def get_config():
  config = defaults.get_default_config()
  # The CIFAR layout (total stride 8) fits 8x8 digits; a 0.5x max width keeps it small.
  config.model_kwargs.layout = 'cifar'
  config.model_kwargs.width_mult = 0.5
  config.model_kwargs.image_size = 8
  config.model_kwargs.in_channels = 1
  config.model_kwargs.num_classes = 10
  config.groups = 6  # coarser than the paper's 12: half the greedy steps

  config.dataset.name = 'digits'
  config.dataset.heldout_size = 200
  config.dataset.augmentation = 'shift'
  config.dataset.shuffle_buffer = 1500
  config.dataset.cache = True

  config.supernet.batch_size = 64
  config.supernet.num_epochs = 15.0
  config.supernet.base_learning_rate = 0.03
  config.supernet.base_batch_size = 64
  config.supernet.schedule = 'cosine'
  config.supernet.warmup_epochs = 0.5
  config.supernet.weight_decay = 5e-5
  config.supernet.log_every_steps = 20
  config.supernet.eval_every_steps = 100
  config.supernet.checkpoint_every_steps = 100
  config.supernet.eval_batch_size = 200  # the whole held-out split in one batch

  # Two budgets: the MACs of the uniform 0.4x and 0.3x networks (the max network is 0.5x).
  config.search.targets.macs_of_width = (0.4, 0.3)
  config.search.batch_size = 200

  config.calibration.num_images = 512
  config.calibration.batch_size = 128

  config.retrain.batch_size = 64
  config.retrain.num_epochs = 10.0
  config.retrain.base_learning_rate = 0.1
  config.retrain.base_batch_size = 64
  config.retrain.schedule = 'cosine'
  config.retrain.warmup_epochs = 0.5
  config.retrain.weight_decay = 5e-5
  config.retrain.log_every_steps = 20
  config.retrain.checkpoint_every_steps = 100
  config.retrain.eval_batch_size = 304
  return config
