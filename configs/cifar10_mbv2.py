r"""CIFAR-10 supernet: the paper's CIFAR MobileNet v2 (88M MACs at 1.0x) at 1.5x max width.

Command:  python -m autoslim_jax.main --config=configs/cifar10_mbv2.py --workdir=WORKDIR
          (add --config.dataset.data_dir=gs://BUCKET/tfds on a Cloud TPU VM; tfds downloads
          CIFAR-10 once. For arrays of your own: --config.dataset.name=npz
          --config.dataset.path=FILE.npz with x_train, y_train, x_test, y_test.)
Hardware: one GPU or a TPU v3-8/v4-8 (batch 256 splits over 1, 2, 4 or 8 devices). Not for a
  CPU: an epoch of the 1.5x supernet takes tens of minutes on 2 cores.
Run time: 50 epochs = 8,750 steps of 4 sub-networks; not yet measured here (the benchmark issue
  records step throughput).
Expected: a supernet whose max network reaches roughly the accuracy of a normally trained
  MobileNet v2 at this schedule and whose min network trails it by several points; the greedy
  search (next stage) then finds the 88M/59M/28M-MACs configs of the paper's Table 2. Not yet
  measured: the results issue records real numbers.
"""

from autoslim_jax import defaults


def get_config():
  config = defaults.get_default_config()
  config.model_kwargs.layout = 'cifar'
  config.model_kwargs.width_mult = 1.5

  config.dataset.name = 'cifar10'
  config.dataset.heldout_size = 5_000  # the search's held-out split, carved from train
  config.dataset.augmentation = 'crop_flip'  # pad 4, random 32x32 crop, horizontal flip
  config.dataset.shuffle_buffer = 45_000
  config.dataset.cache = True

  # A modern CIFAR recipe (design.md, section 3): SGD nesterov 0.1 at batch 128, cosine decay,
  # weight decay 5e-4; 50 epochs for the supernet (the paper's 10-20% of a full schedule is too
  # short on CIFAR for the min network to learn).
  config.supernet.batch_size = 256
  config.supernet.num_epochs = 50.0
  config.supernet.base_learning_rate = 0.1
  config.supernet.base_batch_size = 128
  config.supernet.schedule = 'cosine'
  config.supernet.warmup_epochs = 2.0
  config.supernet.weight_decay = 5e-4
  config.supernet.log_every_steps = 50
  config.supernet.eval_every_steps = 1_000
  config.supernet.checkpoint_every_steps = 500
  config.supernet.eval_batch_size = 1_000  # 5 batches cover the 5,000 held-out images
  return config
