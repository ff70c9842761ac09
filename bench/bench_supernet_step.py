r"""Supernet sandwich-step throughput: JAX (masked, max width) against PyTorch (sliced weights).

  python bench/bench_supernet_step.py                      # both networks, CPU-sized batches
  python bench/bench_supernet_step.py --network=cifar --batch_sizes=256,512,1024   # accelerator

One training step of the paper's supernet (MobileNet v2 1.5x, sandwich of 4: max, min and two
random configs, inplace distillation, SGD with Nesterov momentum) on synthetic images, for:

- JAX variants (``--variants``): ``fused`` (what the package runs: the members in one vmapped
  pass, float32, the state donated), ``sequential`` (members one after another), ``bfloat16``
  (fused, bfloat16 compute, float32 params) and ``no_donation`` (fused, the state copied);
- ``torch``: the same step in PyTorch slicing weights per width (``bench/torch_slimmable.py``,
  with PyTorch's default threads): float32 (the pair of ``fused``) and bf16 autocast with
  channels-last tensors (the pair of ``bfloat16``), measured first in the same invocation, on
  the same configs (they need no JAX compilation, so a run stopped during a minute-long JAX
  compile keeps them), and each JAX row gives the JAX/PyTorch ratio of one run. Skipped, with a
  note, where PyTorch is not installed. That PyTorch computes the JAX network's logits is
  checked first where JAX computes on the CPU (``--check_torch``); on an accelerator the check
  would compile the JAX network there, so it is left to tests/test_bench.py (CPU).

Per setting it prints and appends to bench/results.md: compile time (trace + XLA compile, no
persistent cache; on a GPU with XLA's autotuning level from ``XLA_FLAGS``,
``--xla_gpu_autotune_level=N``, or "default"), the median step time of ``--repeats`` steps
after a warm-up, images/s, and utilisation: *useful* MACs (those of the sub-networks actually
trained: the configs' MACs) and *computed* MACs (JAX computes every member at max width) per
second, each counting a training step as 3x the forward MACs, against the measured float32
(bfloat16 for that variant) matrix product peak of the device (``common.matmul_peak_flops``;
1 MAC = 2 FLOPs).

Needs jax, flax, optax and numpy (PyTorch optional). Uses every local device (data parallel).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import resources  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import steps  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax.models.mobilenet_v2 import LAYOUTS, block_plan  # pylint: disable=g-import-not-at-top,line-too-long

NETWORKS = ({'cifar': dict(layout='cifar', width_mult=0.35, image_size=8),
             'imagenet': dict(layout='imagenet', width_mult=0.35, image_size=32)} if common.SMOKE
            else {'cifar': dict(layout='cifar', width_mult=1.5),
                  'imagenet': dict(layout='imagenet', width_mult=1.5)})
# On the 24 GiB CPU VM the fused step runs out of memory at CIFAR batch 128 (the activations of
# 4 x 128 max-width passes, ~32 GB) and ImageNet batch 8.
DEFAULT_BATCH_SIZES = {('cpu', 'cifar'): (32, 64), ('cpu', 'imagenet'): (2, 4),
                       ('gpu', 'cifar'): (256, 512, 1024), ('gpu', 'imagenet'): (64, 128, 256)}
VARIANTS = {'fused': dict(fused=True, donate=True, dtype=jnp.float32),
            'sequential': dict(fused=False, donate=True, dtype=jnp.float32),
            'bfloat16': dict(fused=True, donate=True, dtype=jnp.bfloat16),
            'no_donation': dict(fused=True, donate=False, dtype=jnp.float32)}
NUM_SANDWICH = 4
SEED = 0
# The PyTorch step paired with each JAX variant (same arithmetic precision).
TORCH_PAIRS = {'fused': 'float32', 'bfloat16': 'bf16'}
AUTOTUNE_FLAG = '--xla_gpu_autotune_level='


def autotune_level() -> str:
  """XLA's GPU autotuning level this process runs with: the XLA_FLAGS entry, or 'default'."""
  levels = [f[len(AUTOTUNE_FLAG):] for f in os.environ.get('XLA_FLAGS', '').split()
            if f.startswith(AUTOTUNE_FLAG)]
  return levels[-1] if levels else 'default'


def step_config(batch_size: int):
  """The supernet section of the defaults with the CIFAR recipe of configs/cifar10_mbv2.py:
  every field ``steps`` reads, with the package's own defaults for the rest."""
  cfg = defaults.get_default_config().supernet
  cfg.update(dict(num_sandwich=NUM_SANDWICH, label_smoothing=0.1, optimizer='sgd', momentum=0.9,
                  weight_decay=5e-4, base_learning_rate=0.1, base_batch_size=128,
                  batch_size=batch_size, schedule='cosine', warmup_epochs=0.0))
  return cfg


def drawn_configs(space, step: int, device: int = 0) -> list[dict[str, int]]:
  """The configs ``device`` trains at ``step`` (max, min, random...), as ints (drawn on the
  CPU: no accelerator compilation)."""
  with jax.default_device(jax.devices('cpu')[0]):
    return [{name: int(v) for name, v in config.items()} for config in
            steps.sandwich_configs(space, steps.device_key(SEED, jnp.int32(step), device),
                                   NUM_SANDWICH)]


def timed_steps(repeats: int) -> range:
  """The steps ``common.timed`` times: after the first call and one warm-up."""
  return range(2, repeats + 2)


def synthetic_batch(network, batch_size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {'image': rng.normal(size=(batch_size,) + network.input_shape).astype(np.float32),
          'label': rng.integers(0, network.num_classes, batch_size).astype(np.int32)}


def time_jax_step(network, space, batch_size: int, variant: dict, repeats: int) -> dict:
  """Compile seconds and per-step seconds of the supernet step."""
  net = models.create_network('mobilenet_v2', dtype=variant['dtype'], **NETWORKS[network])
  cfg = step_config(batch_size)
  mesh = parallel.make_mesh()
  # One program: eagerly, the optimizer's init compiles each of its small ops on its own.
  state = jax.jit(lambda key: steps.create_train_state(
      net, key, lambda p: steps.create_optimizer(cfg, net, p)))(jax.random.key(SEED))
  state = parallel.replicate(state, mesh)
  batch = parallel.shard_batch(synthetic_batch(net, batch_size), mesh)
  step = steps.make_train_step(net, space, cfg, mesh, fused=variant['fused'],
                               donate=variant['donate'])
  inputs = steps.step_inputs(0.1, SEED)
  start = time.perf_counter()
  compiled = step.lower(state, batch, inputs).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = compiled(holder['state'], batch, inputs)
    jax.block_until_ready(metrics)
    if not float(metrics['finite']):
      raise FloatingPointError('the benchmark step diverged')

  _, times = common.timed(one_step, repeats)
  return {'compile_s': compile_s, 'step_s': common.median(times)}


def torch_model(net, layout: str, device: str):
  """The PyTorch slicing twin of ``net`` (a ``mobilenet_v2`` Network of ``layout``), with
  ``net``'s initial weights (``net.init`` at ``SEED``)."""
  import torch_slimmable  # pylint: disable=g-import-not-at-top
  model = torch_slimmable.SlicedMobileNetV2(net.max_widths, block_plan(layout),
                                            LAYOUTS[layout][0], net.num_classes)
  with jax.default_device(jax.devices('cpu')[0]):  # no accelerator compile before PyTorch's step
    params = jax.device_get(net.init(jax.random.key(SEED)))['params']
  torch_slimmable.load_flax_params(model, params)
  return model.to(device)


def torch_logits_match(net, model, configs, device: str, images: int = 8) -> float:
  """Largest logit difference, relative to the largest logit, between ``model`` and the masked
  JAX network over ``configs`` (BatchNorm on batch statistics, as in training): the two
  implementations compute the same network."""
  import torch  # pylint: disable=g-import-not-at-top
  from autoslim_jax import evaluate  # pylint: disable=g-import-not-at-top
  variables = net.init(jax.random.key(SEED))
  batch = synthetic_batch(net, images)
  logits = jax.jit(functools.partial(evaluate.logits_with_batch_stats, net.supernet()))
  worst = 0.0
  for config in configs:
    want = np.asarray(logits(variables, batch['image'], net.channel_space().as_arrays(config)))
    with torch.no_grad():
      got = model(torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous().to(device),
                  config).cpu().numpy()
    worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
  return worst


def check_torch_network(network, space) -> float:
  """Refuses a PyTorch network that does not compute the JAX network's logits (on the CPU, JAX
  and PyTorch both); returns their largest relative difference."""
  net = models.create_network('mobilenet_v2', **NETWORKS[network])
  with jax.default_device(jax.devices('cpu')[0]):
    difference = torch_logits_match(net, torch_model(net, NETWORKS[network]['layout'], 'cpu'),
                                    drawn_configs(space, 0), 'cpu')
  if difference > 1e-3:
    raise AssertionError(f'the PyTorch network differs from the JAX one: logits {difference:.2g}'
                         ' apart (relative)')
  return difference


def time_torch_step(network, space, batch_size: int, repeats: int, bf16: bool = False) -> dict:
  """Per-step seconds of the PyTorch slicing implementation on the configs JAX trained;
  ``bf16``: under bfloat16 autocast with channels-last tensors (PyTorch's fast path for convs on
  recent GPUs)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_slimmable  # pylint: disable=g-import-not-at-top
  net = models.create_network('mobilenet_v2', **NETWORKS[network])
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = torch_model(net, NETWORKS[network]['layout'], device)
  optimizer = torch.optim.SGD(model.parameter_groups(5e-4), lr=0.1, momentum=0.9,
                              nesterov=True)
  batch = synthetic_batch(net, batch_size)
  images = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous().to(device)
  labels = torch.from_numpy(batch['label']).long().to(device)
  if bf16:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  configs = [drawn_configs(space, step) for step in range(repeats + 2)]
  counter = iter(range(len(configs)))

  def one_step():
    # Returns the loss as a Python float: waits for the device.
    with torch.autocast(device.split(':')[0], dtype=torch.bfloat16, enabled=bf16):
      torch_slimmable.sandwich_step(model, optimizer, images, labels, configs[next(counter)],
                                    0.1)

  _, times = common.timed(one_step, repeats)
  return {'step_s': common.median(times), 'version': torch.__version__, 'device': device,
          'threads': torch.get_num_threads()}


def free_torch_memory() -> None:
  """Hands PyTorch's cached device memory back, for the JAX steps after it."""
  import torch  # pylint: disable=g-import-not-at-top
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--network', choices=('cifar', 'imagenet', 'both'), default='both')
  parser.add_argument('--batch_sizes', default='',
                      help='comma-separated global batch sizes (default: per network and device)')
  parser.add_argument('--variants', default=','.join(VARIANTS),
                      help=f'JAX variants, of {list(VARIANTS)}; variants other than fused run '
                      'at the middle batch size only')
  parser.add_argument('--torch', default='auto', choices=('auto', 'yes', 'no'),
                      help='also time the PyTorch slicing step (auto: if torch imports)')
  parser.add_argument('--check_torch', default='auto', choices=('auto', 'yes', 'no'),
                      help='check first that PyTorch computes the JAX network\'s logits, on the '
                      'CPU (auto: where JAX computes on the CPU; on an accelerator it would '
                      'cost a compilation of the JAX network, and tests/test_bench.py checks it)')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  variants = [v for v in args.variants.split(',') if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    parser.error(f'unknown --variants {unknown}; valid: {list(VARIANTS)}')
  use_torch = args.torch == 'yes'
  if args.torch == 'auto':
    try:
      import torch  # pylint: disable=g-import-not-at-top
      use_torch = bool(torch.__version__)
    except ImportError:
      print('PyTorch is not installed: the PyTorch comparison is skipped (pip install torch)')

  platform = 'cpu' if jax.default_backend() == 'cpu' else 'gpu'
  check_torch = use_torch and (args.check_torch == 'yes' or (args.check_torch == 'auto'
                                                             and platform == 'cpu'))
  peaks = {jnp.float32: common.matmul_peak_flops('float32'),
           jnp.bfloat16: common.matmul_peak_flops('bfloat16')}
  autotune = f', XLA GPU autotune level {autotune_level()}' if platform == 'gpu' else ''
  print(f'{common.machine()}; matrix product peak: float32 {peaks[jnp.float32] / 1e9:.1f} '
        f'GFLOP/s, bfloat16 {peaks[jnp.bfloat16] / 1e9:.1f} GFLOP/s{autotune}', flush=True)
  networks = ('cifar', 'imagenet') if args.network == 'both' else (args.network,)
  for network in networks:
    net = models.create_network('mobilenet_v2', **NETWORKS[network])
    space = net.channel_space()
    resource_model = resources.ResourceModel(net)
    max_macs = resource_model(space.max_config())['macs']
    sizes = ([int(b) for b in args.batch_sizes.split(',')] if args.batch_sizes
             else (8,) if common.SMOKE else DEFAULT_BATCH_SIZES[(platform, network)])
    name = (f'{"CIFAR" if network == "cifar" else "ImageNet"} MobileNet v2 '
            f'{net.max_width_mult}x ({net.input_shape[0]}px, {max_macs / 1e6:.0f}M MACs at max)')
    checked = (f'logits checked against JAX on the CPU ({check_torch_network(network, space):.1g}'
               ' apart)' if check_torch else 'logits not checked in this run (tests/test_bench.py'
               ' checks them on the CPU)')
    for batch_size in sizes:
      middle = batch_size == sizes[len(sizes) // 2]
      chosen = [v for v in variants if v == 'fused' or middle]
      useful = np.mean([sum(resource_model(c)['macs'] for c in drawn_configs(space, s, d))
                        for s in timed_steps(args.repeats) for d in range(jax.device_count())])
      computed = NUM_SANDWICH * max_macs
      setting = f'{name}, batch {batch_size}, sandwich {NUM_SANDWICH}, median of {args.repeats}'

      def append(benchmark, more_setting, result, torch_used=False):
        # Each row as soon as it is measured: a run stopped at its time cap keeps them (the
        # first accelerator run compiled for 60-120 s a variant).
        packages = ('jax', 'flax', 'optax', 'numpy') + (('torch',) if torch_used else ())
        common.append_results([common.row(f'supernet sandwich step, {benchmark}',
                                          setting + more_setting, result, packages)])

      # PyTorch first (float32 for fused, bf16 autocast for bfloat16): no JAX compilation.
      torch_seconds = {}
      torch_variants = [TORCH_PAIRS[v] for v in chosen if v in TORCH_PAIRS] if use_torch else []
      for torch_variant in torch_variants:
        benchmark = 'PyTorch slicing' + (', bf16 autocast, channels-last'
                                         if torch_variant == 'bf16' else '')
        try:
          result = time_torch_step(network, space, batch_size, args.repeats,
                                   bf16=torch_variant == 'bf16')
        except RuntimeError as e:  # torch.OutOfMemoryError; JAX holds 75% of a GPU by default
          if 'out of memory' not in str(e):
            raise
          result = {'out_of_memory': str(e).splitlines()[0][:120]}
        free_torch_memory()
        if 'out_of_memory' in result:
          print(f'{network} batch {batch_size} torch {torch_variant}: out of memory', flush=True)
          append(benchmark, '', f'out of device memory ({result["out_of_memory"]})',
                 torch_used=True)
          continue
        print(f'{network} batch {batch_size} torch {torch_variant}: {result}', flush=True)
        torch_seconds[torch_variant] = result['step_s']
        per_second = batch_size / result['step_s']
        useful_rate = 3 * useful * per_second
        peak = peaks[jnp.bfloat16 if torch_variant == 'bf16' else jnp.float32]
        append(benchmark, f', torch {result["version"]} on {result["device"]}, '
               f'{result["threads"]} threads, {checked}',
               f'{per_second:,.1f} images/s ({result["step_s"] * 1e3:,.0f} ms/step); useful '
               f'{useful_rate / 1e9:,.1f} GMAC/s ({200 * useful_rate / peak:.1f}% of peak)',
               torch_used=True)
      for variant in chosen:
        try:
          result = time_jax_step(network, space, batch_size, VARIANTS[variant], args.repeats)
        except jax.errors.JaxRuntimeError as e:
          if 'RESOURCE_EXHAUSTED' not in str(e):
            raise
          print(f'{network} batch {batch_size} {variant}: out of memory', flush=True)
          append(f'JAX {variant}', autotune,
                 f'out of device memory ({str(e).splitlines()[0][:120]})')
          continue
        print(f'{network} batch {batch_size} {variant}: {result}', flush=True)
        per_second = batch_size / result['step_s']
        peak = peaks[VARIANTS[variant]['dtype']]
        useful_rate = 3 * useful * per_second
        computed_rate = 3 * computed * per_second
        pair = TORCH_PAIRS.get(variant)
        ratio = (f'; JAX {variant} / PyTorch {pair} throughput: '
                 f'{torch_seconds[pair] / result["step_s"]:.2f}x' if pair in torch_seconds
                 else '')
        append(f'JAX {variant}', autotune,
               f'{per_second:,.1f} images/s ({result["step_s"] * 1e3:,.0f} ms/step; compile '
               f'{result["compile_s"]:.1f} s); useful {useful_rate / 1e9:,.1f} GMAC/s '
               f'({200 * useful_rate / peak:.1f}% of peak), computed {computed_rate / 1e9:,.1f} '
               f'GMAC/s ({200 * computed_rate / peak:.1f}%){ratio}')


if __name__ == '__main__':
  main()
