"""Every config field, with its default. Config files start from ``get_default_config()`` and
change a few fields; a key not in here is an error (``check_config``), so a misspelled key can
never silently fall back to a default.
"""

from __future__ import annotations

import difflib

import ml_collections

from autoslim_jax import models
from autoslim_jax import published
from autoslim_jax import training_mode


def get_default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The network: a registry name (mobilenet_v1, mobilenet_v2, mnasnet, resnet50) or your own
  # factory as 'package.module:function' or 'path/to/file.py:function' (autoslim_jax/models), and
  # its arguments. width_mult is the supernet's max width: 1.5x for the mobile nets in the paper.
  config.model = 'mobilenet_v2'
  config.model_kwargs = ml_collections.ConfigDict(dict(layout='imagenet', width_mult=1.5))
  # A plain Flax module's argument that switches it between training and inference mode: ''
  # finds it by name (train, training, is_training, deterministic), 'NAME' is True in training
  # ('is_train'), 'not NAME' True in inference ('not eval_mode').
  config.mode_argument = ''

  # Channel groups per unit (G) and the narrowest width, as a multiplier of the 1.0x network:
  # k_min = G * min_width / max width must be whole (the narrowest choice is exactly min_width):
  # the paper's 10 groups for 0.15x-1.5x give k_min = 1.
  config.groups = 10
  config.min_width = 0.15
  # Units kept at their max width, by name: never sampled narrower, slimmed by the search or
  # scaled in the uniform baselines (`python -m autoslim_jax.profile --model=M --width=1` lists
  # the units). E.g. ('stem',) for a first layer a deployment needs whole.
  config.fixed_units = ()

  config.dataset = ml_collections.ConfigDict()
  # digits | npz | folder | cifar10 | imagenet2012 | any prepared tfds data set (input_pipeline)
  config.dataset.name = 'imagenet2012'
  config.dataset.path = ''  # npz file or image folder
  config.dataset.data_dir = ''  # tfds data dir ('' = tfds' default, ~/tensorflow_datasets)
  # ImageNet's manual download ('' = tfds' default), named in the prepare command it prints.
  config.dataset.manual_dir = ''
  config.dataset.heldout_size = 50_000  # carved from the training data for the search
  # 0: images of one size keep it (CIFAR, digits), images of many sizes (ImageNet, most
  # folders) are cropped and resized to 224x224; N: images cropped and resized to NxN.
  config.dataset.image_size = 0
  config.dataset.augmentation = 'inception'  # none | shift | crop_flip | inception
  # Processes that decode and augment batches (grain workers); 0: reader threads of this
  # process, enough for arrays in memory (bench/bench_input.py measures what JPEGs need).
  config.dataset.worker_processes = 0

  # Stage 1: the supernet (sandwich rule + inplace distillation).
  config.supernet = ml_collections.ConfigDict()
  config.supernet.batch_size = 2048  # global, divisible by the number of devices
  config.supernet.num_epochs = 50.0
  config.supernet.num_sandwich = 4  # max, min and num_sandwich - 2 random sub-networks
  config.supernet.label_smoothing = 0.1  # of the max network's labels
  # The other members learn the max network's predictions (the paper); False: the labels, as
  # the max network does (an ablation).
  config.supernet.inplace_distillation = True
  config.supernet.optimizer = 'sgd'  # sgd (nesterov momentum) | adamw
  config.supernet.momentum = 0.9
  # Learning rate = base_learning_rate * batch_size / base_batch_size (paper: 0.5 at 2048).
  config.supernet.base_learning_rate = 0.5
  config.supernet.base_batch_size = 2048
  config.supernet.schedule = 'linear'  # linear | cosine decay to 0 | step (x0.1 at 30/60/90%)
  config.supernet.warmup_epochs = 0.0
  config.supernet.weight_decay = 1e-4  # not on depthwise kernels, BatchNorm or biases
  config.supernet.compute_dtype = 'float32'  # float32 | bfloat16 (params stay float32)
  # The sandwich's members in one vmapped pass (True) or one after another: fused compiled
  # 2.5-2.7x faster and stepped 1.17-1.27x slower on a 2-core CPU (bench/results.md). Measure
  # on your accelerator: python bench/bench_supernet_step.py --variants=fused,sequential
  config.supernet.fused_sandwich = True
  config.supernet.log_every_steps = 100
  config.supernet.eval_every_steps = 5000  # held-out accuracy of max and min; 0 = at the end
  config.supernet.checkpoint_every_steps = 1000
  config.supernet.checkpoints_to_keep = 3
  config.supernet.eval_batch_size = 2048  # also the BatchNorm batch of held-out evaluation

  # Stage 2: greedy slimming on the held-out split (no training).
  config.search = ml_collections.ConfigDict()
  # The first config at or under each target is recorded; several metrics at once are fine.
  config.search.targets = ml_collections.ConfigDict()
  # Tuples (overridable from the command line: --config.search.targets.macs='(2e8, 3e8)').
  config.search.targets.macs = ()  # e.g. (200e6, 300e6, 500e6)
  config.search.targets.params = ()
  config.search.targets.memory = ()  # elements of all feature maps and weights
  config.search.targets.latency_ms = ()  # batch 1, one CPU thread of this host, median
  config.search.targets.macs_of_width = ()  # the MACs of uniform nets, e.g. (1.0, 0.75, 0.5)
  config.search.score = 'accuracy'  # accuracy (ties broken by loss) | loss
  config.search.batch_size = 2048  # also the BatchNorm batch (batch-statistics mode)
  config.search.num_images = 0  # 0 = the whole held-out split; N = its first N images
  # Candidates per vmapped call; 0 = as many as fit in a device's memory (all of a step on a
  # CPU), 1 = one by one. The scores are the same.
  config.search.chunk_size = 0
  config.search.measure_latency = False  # also without latency targets (always with them)
  config.search.latency_warmup = 5
  config.search.latency_repeats = 20
  # Where latency is measured: 'jax' (XLA:CPU, one thread) or 'onnxruntime' (the exported ONNX
  # model on the CPU, the runtime slim nets are deployed with; pip install -e '.[onnx]').
  config.search.latency_backend = 'jax'
  config.search.latency_threads = 1  # onnxruntime's intra-op threads (jax: always 1)

  # BatchNorm calibration before any test accuracy and export: exact averages over N images.
  config.calibration = ml_collections.ConfigDict()
  config.calibration.num_images = 2048  # training images (no augmentation)
  config.calibration.batch_size = 256

  # Stage 3: each searched net trained from scratch, and the uniform net of the same MACs.
  config.retrain = ml_collections.ConfigDict()
  config.retrain.mode = 'individual'  # individual (slim nets) | joint (one slimmable net)
  config.retrain.uniform_baseline = True
  # Individual mode: every searched and uniform net trained side by side in one compiled program
  # (the masked supernet at each net's config, each with its own weights and optimizer state,
  # the same batches; it computes what the slim nets compute). False: each net as a physically
  # slim network with a program of its own: smaller steps, a compile each (bench/results.md).
  config.retrain.side_by_side = True
  # Published AutoSlim nets of config.model to retrain instead of the search's results (names as
  # in autoslim_jax/published.py, e.g. ('207M', '305M')): stages retrain and export only.
  config.retrain.published = ()
  config.retrain.batch_size = 1024
  config.retrain.num_epochs = 300.0
  config.retrain.label_smoothing = 0.1
  config.retrain.optimizer = 'sgd'
  config.retrain.momentum = 0.9
  config.retrain.base_learning_rate = 0.5
  config.retrain.base_batch_size = 2048
  config.retrain.schedule = 'linear'
  config.retrain.warmup_epochs = 0.0
  config.retrain.weight_decay = 1e-4
  config.retrain.compute_dtype = 'float32'
  config.retrain.log_every_steps = 100
  config.retrain.eval_every_steps = 0  # test accuracy is measured once, after calibration
  config.retrain.checkpoint_every_steps = 1000
  config.retrain.checkpoints_to_keep = 2
  config.retrain.eval_batch_size = 1024  # test-set batches

  # Slim exports (WORKDIR/export/TARGET/FAMILY): Flax variables and model.json always, and the
  # portable artifacts (autoslim_jax/deploy.py), checked on the first test images.
  config.export = ml_collections.ConfigDict()
  # model.jax_exported (always written): a jax.export program that runs without this package.
  config.export.platforms = ('cpu', 'cuda', 'tpu')  # what the JAX program is lowered for
  # model.onnx, checked in onnxruntime: auto = when onnx and onnxruntime are installed, always
  # (an error when they are not), never.
  config.export.onnx = 'auto'
  config.export.check_images = 64  # test images both artifacts are checked on

  # Compiling: JAX's persistent compilation cache keeps every compiled program on disk, so a
  # rerun, a resumed run or another seed loads what it compiled before instead of compiling it.
  config.compilation = ml_collections.ConfigDict()
  # '' = JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/autoslim_jax/xla; 'none' = off.
  config.compilation.cache_dir = ''
  config.compilation.min_compile_seconds = 0.0  # programs that compiled faster are not kept
  # XLA's GPU autotuning level (XLA_FLAGS --xla_gpu_autotune_level): -1 = XLA's default (4), 0
  # = off. Set before the accelerator starts (python -m autoslim_jax.main does); no effect on
  # CPUs and TPUs. bench/accelerator_run.py measures compile and step time at each level.
  config.compilation.gpu_autotune_level = -1

  # The stages to run, in order: supernet, search, retrain, export (calibrate, test, export,
  # report). Each skips itself when its outputs are complete and resumes when they are partial.
  config.stages = 'supernet,search,retrain,export'
  return config


STAGES = ('supernet', 'search', 'retrain', 'export')
LATENCY_BACKENDS = ('jax', 'onnxruntime')

# Numeric fields with a lower bound: key -> (bound, bound allowed).
POSITIVE = {
    'groups': (2, True), 'min_width': (0, False), 'dataset.heldout_size': (1, True),
    'dataset.image_size': (0, True), 'dataset.worker_processes': (0, True),
    'search.batch_size': (1, True), 'compilation.min_compile_seconds': (0, True),
    'compilation.gpu_autotune_level': (-1, True), 'search.num_images': (0, True), 'search.chunk_size': (0, True),
    'calibration.num_images': (1, True), 'calibration.batch_size': (1, True),
    'search.latency_threads': (1, True), 'export.check_images': (1, True),
    **{f'{stage}.{key}': bound for stage in ('supernet', 'retrain') for key, bound in (
        ('batch_size', (1, True)), ('num_epochs', (0, False)), ('base_learning_rate', (0, False)),
        ('base_batch_size', (1, True)), ('warmup_epochs', (0, True)), ('weight_decay', (0, True)),
        ('log_every_steps', (1, True)), ('eval_every_steps', (0, True)),
        ('checkpoint_every_steps', (1, True)), ('checkpoints_to_keep', (1, True)),
        ('eval_batch_size', (1, True)))},
}


def parse_stages(stages: str) -> list[str]:
  names = [s.strip() for s in stages.split(',') if s.strip()]
  for name in names:
    if name not in STAGES:
      close = difflib.get_close_matches(name, STAGES, n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ValueError(f'unknown stage {name!r} in config.stages{hint}; valid: {", ".join(STAGES)}')
  if not names:
    raise ValueError(f'config.stages is empty; give some of {", ".join(STAGES)}')
  return [s for s in STAGES if s in names]


def _check_keys(config, defaults, prefix: str) -> None:
  for key in config.keys():
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults.keys()), n=1)
      hint = f' (did you mean {prefix}{close[0]!r}?)' if close else ''
      raise ValueError(f'unknown config key {prefix}{key!r}{hint}; valid keys here: '
                       f'{sorted(defaults.keys())}')
    if key != 'model_kwargs' and isinstance(defaults[key], ml_collections.ConfigDict):
      _check_keys(config[key], defaults[key], f'{prefix}{key}.')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses unknown keys (with a suggestion) and model arguments the model does not take."""
  _check_keys(config, get_default_config(), '')
  parameters = models.factory_parameters(config.model)
  for key in config.model_kwargs.keys():
    if key not in parameters:
      raise ValueError(f'config.model_kwargs.{key} is not an argument of {config.model}; valid: '
                       f'{sorted(parameters)}')
  training_mode.parse_mode_argument(config.mode_argument)
  stages = parse_stages(config.stages)
  if config.retrain.published:
    for name in config.retrain.published:
      published.get(config.model, name)  # names the valid ones
    if {'supernet', 'search'} & set(stages):
      raise ValueError(f'config.retrain.published={tuple(config.retrain.published)} retrains the '
                       'published networks: set config.stages=retrain,export (got '
                       f'{config.stages!r})')
  if config.retrain.mode not in ('individual', 'joint'):
    raise ValueError(f'retrain.mode must be individual or joint, got {config.retrain.mode!r}')
  if config.search.score not in ('accuracy', 'loss'):
    raise ValueError(f'search.score must be accuracy or loss, got {config.search.score!r}')
  if config.search.latency_backend not in LATENCY_BACKENDS:
    raise ValueError(f'config.search.latency_backend must be one of {LATENCY_BACKENDS}, got '
                     f'{config.search.latency_backend!r}')
  if config.search.latency_backend == 'jax' and config.search.latency_threads != 1:
    raise ValueError(f'config.search.latency_threads={config.search.latency_threads}: the jax '
                     "latency backend measures one thread; threads are onnxruntime's")
  if config.export.onnx not in ('auto', 'always', 'never'):
    raise ValueError(f"config.export.onnx must be 'auto', 'always' or 'never', got "
                     f'{config.export.onnx!r}')
  platforms = tuple(config.export.platforms)
  if 'cpu' not in platforms or not set(platforms) <= {'cpu', 'cuda', 'rocm', 'tpu'}:
    raise ValueError(f'config.export.platforms={platforms}: give some of cpu, cuda, rocm, tpu, '
                     'cpu included (the export checks the program on the CPU)')
  if config.supernet.num_sandwich < 2:
    raise ValueError(f'supernet.num_sandwich must be >= 2 (max and min), got '
                     f'{config.supernet.num_sandwich}')
  for key, (low, inclusive) in POSITIVE.items():
    value = config
    for part in key.split('.'):
      value = value[part]
    if value < low or (value == low and not inclusive):
      raise ValueError(f'config.{key} is {value!r}; valid: {">=" if inclusive else ">"} {low}')
