r"""Quickstart: the whole AutoSlim pipeline on the embedded digits data set, in minutes on a CPU.

Command:  python -m autoslim_jax.main --config=configs/quickstart.py --workdir=/tmp/autoslim_quick
Hardware: any CPU; no accelerator and no download (the 1,797 8x8 digits ship in scikit-learn).
Run time: 4 to 6 minutes on a 2-core machine from an empty compilation cache (4 min 43 s on
  2026-12-06: 87 programs compiled in 64 s); a rerun with another seed compiles nothing
  (bench/bench_compiles.py).
Expected: a MobileNet v2 supernet (CIFAR layout, 0.5x max) trained 300 steps with the sandwich
  rule (held-out accuracy about 87-91% max / 68-75% min), a greedy search of about 50 steps to the MACs
  of the uniform 0.4x and 0.3x networks, the two searched nets and their two uniform baselines
  retrained 12 epochs each (test accuracy 85-93%, several points of seed noise), slim exports in
  WORKDIR/export, and WORKDIR/results.{json,md} and WORKDIR/plots. Recorded in
  runs/quickstart.md. Rerunning the command resumes where it stopped; a finished run only
  prints the results.
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
  config.groups = 6  # coarser than the paper's 10: fewer greedy steps
  config.min_width = 0.5 * 2 / 6  # k_min = 2 of 6 groups: the narrowest width 0.1667x

  config.dataset.name = 'digits'
  config.dataset.heldout_size = 200
  config.dataset.augmentation = 'shift'

  config.supernet.batch_size = 64
  config.supernet.num_sandwich = 3  # max, min and one random: a quicker compile than 4
  config.supernet.num_epochs = 15.0
  config.supernet.base_learning_rate = 0.02
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
  config.retrain.num_epochs = 12.0
  config.retrain.base_learning_rate = 0.03
  config.retrain.base_batch_size = 64
  config.retrain.schedule = 'cosine'
  config.retrain.warmup_epochs = 0.5
  config.retrain.weight_decay = 5e-5
  config.retrain.log_every_steps = 20
  config.retrain.checkpoint_every_steps = 100
  config.retrain.eval_batch_size = 304
  return config
