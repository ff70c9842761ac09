r"""The real CIFAR-10 sample on a CPU: the paper's CIFAR MobileNet v2 setting scaled to 2 cores.

Command:  python -m autoslim_jax.experiment --config=configs/cifar10_sample_cpu.py \
              --workdir=WORKDIR --npz=PATH/cifar10_subset.npz --seeds=0,1,2
          (one pipeline run: python -m autoslim_jax.main --config=configs/cifar10_sample_cpu.py
          --workdir=W --config.dataset.path=PATH/cifar10_subset.npz). Any .npz with x_train,
          y_train, x_test, y_test (uint8 32x32x3 images) works: CIFAR-10 itself, or your arrays.
Hardware: a 2-core CPU (no accelerator needed).
Run time: 29 minutes per seed on the 2-core development VM (supernet 3 epochs of 4,000 images,
  6 min; greedy search, 39-43 steps scored on 256 held-out images, 4 min; 6 slim nets retrained
  6 epochs, 18 min; export 1 min), plus 3 minutes per config trained from scratch in the
  estimator study. Recorded in runs/results.md.
Expected: the paper's Table 2 proportions on a scale a CPU can run: the supernet's max width is
  0.35x (the paper's 1.5x scaled by 0.233), its min width 0.1 of it (the paper's 0.15x of 1.5x), and
  the targets are the MACs of the uniform nets at 1/1.5, 0.75/1.5 and 0.5/1.5 of the max width
  (the paper's 1.0x, 0.75x, 0.5x of a 1.5x supernet). Schedules this short on 4,000 training
  images leave every net far from convergence (measured: retrained nets 34-42% test accuracy,
  the supernet's slices 19-24%); the seeds' spread is reported beside the difference. Not
  comparable with published CIFAR-10 numbers.
"""

from autoslim_jax import defaults

MAX_WIDTH = 0.35
# The paper's CIFAR budgets: uniform 1.0x, 0.75x and 0.5x nets of a 1.5x supernet.
PAPER_TARGET_WIDTHS = (1.0, 0.75, 0.5)
PAPER_MAX_WIDTH = 1.5


def get_config():
  config = defaults.get_default_config()
  config.model_kwargs.layout = 'cifar'
  config.model_kwargs.width_mult = MAX_WIDTH
  config.groups = 4  # coarser than the paper's 10: fewer greedy steps
  config.min_width = MAX_WIDTH / 4  # k_min = 1 of 4 groups (what 0.1 x MAX_WIDTH rounded to)

  config.dataset.name = 'npz'
  config.dataset.path = ''  # set by the experiment's --npz, or --config.dataset.path
  config.dataset.heldout_size = 660  # 4,000 training images remain
  config.dataset.augmentation = 'crop_flip'

  config.supernet.batch_size = 64
  config.supernet.num_sandwich = 3  # max, min and one random: 3/4 of the paper's cost per step
  config.supernet.num_epochs = 3.0
  config.supernet.base_learning_rate = 0.1
  config.supernet.base_batch_size = 128
  config.supernet.schedule = 'cosine'
  config.supernet.warmup_epochs = 0.3
  config.supernet.weight_decay = 5e-5
  config.supernet.log_every_steps = 25
  config.supernet.eval_every_steps = 0
  config.supernet.checkpoint_every_steps = 50
  config.supernet.eval_batch_size = 660

  config.search.targets.macs_of_width = tuple(
      round(MAX_WIDTH * w / PAPER_MAX_WIDTH, 4) for w in PAPER_TARGET_WIDTHS)
  config.search.batch_size = 256  # one BatchNorm batch of the first 256 held-out images
  config.search.num_images = 256

  config.calibration.num_images = 1024
  config.calibration.batch_size = 256

  config.retrain.batch_size = 64
  config.retrain.num_epochs = 6.0
  config.retrain.base_learning_rate = 0.1
  config.retrain.base_batch_size = 128
  config.retrain.schedule = 'cosine'
  config.retrain.warmup_epochs = 0.3
  config.retrain.weight_decay = 5e-5
  config.retrain.log_every_steps = 50
  config.retrain.checkpoint_every_steps = 100
  config.retrain.eval_batch_size = 932
  return config
