r"""Estimated accelerator hours and cost of the shipped configs: arithmetic, not measurements.

No accelerator run of these configs has been recorded yet. The numbers come from counting
multiply-accumulates with the package's resource model (exact per channel config), dividing by an
ASSUMED fraction of the vendors' peak FLOP/s, and pricing at ASSUMED on-demand prices. Replace
both assumptions with your own: time a few hundred steps on your hardware for the utilization
(bench/bench_supernet_step.py), and take prices from your provider's current price list (the
defaults below were written without internet access and could not be checked).

  python launch/estimate_cost.py                     # Markdown tables, every shipped config
  python launch/estimate_cost.py --json
  python launch/estimate_cost.py configs/mbv2.py --hardware=v5litepod-16,8xH100 \
      --utilization=0.1 --price=v5e=1.2

The work model (1 MAC = 2 FLOPs; training = forward + backward = 3 forward passes):
- supernet: steps x batch images (the pipeline's whole batches per epoch), each through the
  sandwich: the max, the min and num_sandwich - 2 random members, a random member's MACs being
  the average over uniform draws (as the training step draws them);
- search: a stand-in for the data-dependent greedy path, the *balanced* path (each step slims
  the unit with the largest remaining fraction of its max width) from the max config until every
  target is reached (latency targets: to the min config); every step forwards all its candidates
  on the held-out images (BatchNorm in batch-statistics mode: one forward pass each);
- retraining: each target's searched network and its uniform baseline (matched in MACs), the
  retrain epochs x training images x 3 forward passes.
Left out (each under about 1% for the shipped configs): periodic held-out evaluations, BatchNorm
calibration, test evaluation, latency measurement and compilation. Also left out, and possibly
dominant: the input pipeline (JPEG decoding for ImageNet) and the memory-bound depthwise convs of
the mobile networks, which keep them far below the utilization that dense convs reach, and for
the CIFAR configs the per-step overheads: a step of 128-256 32x32 images is too little work to
keep an accelerator busy, so their time is more likely steps x a measured step time (the step
counts are in the work table). The hours are therefore compute-bound lower bounds at the assumed
utilization.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
from typing import Any, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, 'configs')
SHIPPED = ('cifar10_mbv1', 'cifar10_mbv2', 'cifar10_mnasnet', 'cifar10_resnet50', 'mbv1', 'mbv2',
           'mnasnet', 'resnet50')

FLOPS_PER_MAC = 2
TRAIN_PASSES = 3  # forward + backward (about twice the forward)
DEFAULT_UTILIZATION = 0.3

# Training images before the held-out split is carved off (tfds split sizes).
TRAIN_IMAGES = {'cifar10': 50_000, 'imagenet2012': 1_281_167}


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  bf16_tflops: float  # vendor peak, dense
  # What float32 convs run at under JAX's default matmul precision: one bfloat16 pass on TPU,
  # TensorFloat-32 on Ampere and later GPUs (JAX docs, "Matmul precision").
  f32_tflops: float
  usd_per_chip_hour: float  # ASSUMED on-demand price: replace with your current price list


# Peak FLOP/s per chip, from the vendors' pages:
#   TPU v3: 123 TFLOP/s bf16 per chip (Google Cloud TPU docs, "TPU v3", peak compute per chip).
#   TPU v4: 275 TFLOP/s bf16 per chip (Google Cloud TPU docs, "TPU v4").
#   TPU v5e: 197 TFLOP/s bf16 per chip (Google Cloud TPU docs, "TPU v5e").
#   A100 SXM: 312 TFLOP/s bf16 dense, 156 TF32 dense (NVIDIA A100 datasheet; twice with sparsity).
#   H100 SXM: 989 TFLOP/s bf16 dense, 495 TF32 dense (NVIDIA H100 datasheet: 1,979 and 989 with
#     sparsity).
# Prices: ASSUMED on-demand USD per chip-hour (Google Cloud list prices as remembered, not
# checked: no internet here). Pass --price=CHIP=USD with your own.
CHIPS = {
    'v3': Chip('TPU v3', 123.0, 123.0, 2.00),
    'v4': Chip('TPU v4', 275.0, 275.0, 3.22),
    'v5e': Chip('TPU v5e', 197.0, 197.0, 1.20),
    'A100': Chip('A100', 312.0, 156.0, 3.67),
    'H100': Chip('H100 SXM', 989.0, 495.0, 11.06),
}


@dataclasses.dataclass(frozen=True)
class Hardware:
  spec: str  # as given: v4-32, 8xH100
  chip: str  # key of CHIPS
  count: int  # chips

  @property
  def label(self) -> str:
    if self.chip in ('A100', 'H100'):
      return f'{self.count}x {CHIPS[self.chip].name}'
    return f'TPU {self.spec} ({self.count} chips)'


def parse_hardware(spec: str) -> Hardware:
  """``v4-32`` (TPU type: v2-v4 and v5p name TensorCores, 2 per chip; v5e names chips) or
  ``NxA100`` / ``NxH100``."""
  tpu = re.fullmatch(r'v(\d)(litepod|e|p)?-(\d+)', spec)
  if tpu:
    generation, kind, number = tpu.group(1), tpu.group(2) or '', int(tpu.group(3))
    chip = 'v5e' if (generation, kind) in (('5', 'litepod'), ('5', 'e')) else f'v{generation}'
    if kind not in ('', 'litepod', 'e') or chip not in CHIPS:
      raise ValueError(f'no peak FLOP/s known for TPU {spec!r}; known TPUs: v3-N, v4-N, '
                       f'v5litepod-N (add a row to CHIPS in {__file__})')
    return Hardware(spec, chip, number if chip == 'v5e' else max(1, number // 2))
  gpu = re.fullmatch(r'(\d+)x(A100|H100)', spec)
  if gpu:
    return Hardware(spec, gpu.group(2), int(gpu.group(1)))
  raise ValueError(f'hardware {spec!r} is not understood; give a TPU type (v3-8, v4-32, '
                   f'v5litepod-16) or NxA100 / NxH100 (1xA100, 8xH100)')


def docstring_hardware(docstring: str) -> list[str]:
  """The hardware a config's docstring names on its ``Hardware:`` line(s), as specs."""
  match = re.search(r'^Hardware:(.*?)(?=^\S[^\n:]*:|\Z)', docstring, re.M | re.S)
  if not match:
    return []
  text = ' '.join(match.group(1).split())
  specs = [f'v{g}-{n}' for g, n in re.findall(r'\bv(\d)-(\d+)\b', text)]
  for count, models in re.findall(r'\b(one|\d+) ((?:[AH]100/?)*)\s*GPUs?\b', text):
    number = 1 if count == 'one' else int(count)
    specs += [f'{number}x{m}' for m in (models.split('/') if models else ('A100', 'H100')) if m]
  return specs


def load_config_module(path: str):
  """The config file as a module (as ml_collections' config_flags loads it)."""
  if not os.path.isfile(path):
    raise ValueError(f'config file {path!r} does not exist')
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'_estimate_cost_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # as an import would (dataclasses in a config need it)
  spec.loader.exec_module(module)
  return module


def whole_batches(images: int, batch_size: int, epochs: float) -> tuple[int, int]:
  """(steps, images) of ``epochs`` at whole batches per epoch, as the training loop counts."""
  steps = max(1, int(round(epochs * (images // batch_size))))
  return steps, steps * batch_size


def random_member_macs(space, resource_model, samples: int = 4096, seed: int = 0) -> float:
  """Average MACs of configs drawn as the training step draws them (each unit uniform over its
  choices, independently)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  columns = [np.asarray(unit.choices)[rng.integers(0, len(unit.choices), samples)]
             for unit in space.units]
  return float(resource_model.batch(np.stack(columns, axis=1))['macs'].mean())


def balanced_search(space, resource_model, targets) -> dict[str, Any]:
  """Greedy slimming along the balanced path: candidate forwards and each target's network."""
  counted = [t for t in targets if t.metric in ('macs', 'params', 'memory')]
  to_min = len(counted) < len(targets) or not targets  # latency targets: cannot be modelled
  current = space.max_config()
  resources = resource_model(current)
  candidate_macs = float(resources['macs'])  # step 0 scores the max config
  candidates, steps = 1, 0
  reached = {}  # target name -> MACs of the first config at or under it

  def record(resources):
    for t in counted:
      if t.name not in reached and resources[t.metric] <= t.value:
        reached[t.name] = float(resources['macs'])

  record(resources)
  while to_min or len(reached) < len(counted):
    options = space.slimming_candidates(current)
    if not options:
      break
    scores = resource_model.of_configs([config for _, config in options])
    candidate_macs += float(scores['macs'].sum())
    candidates += len(options)
    steps += 1
    fractions = [current[unit] / space[unit].max_channels for unit, _ in options]
    chosen = fractions.index(max(fractions))
    current = options[chosen][1]
    record({name: values[chosen] for name, values in scores.items()})
  return {'steps': steps, 'candidates': candidates, 'candidate_macs': candidate_macs,
          'target_macs': reached, 'min_macs': float(resource_model(current)['macs'])}


def config_work(config, train_images: int | None = None) -> dict[str, Any]:
  """FLOPs per stage of one config (see the module docstring for the model)."""
  # Imported here so that importing this file stays fast (the pipeline pulls in TensorFlow).
  from autoslim_jax import defaults  # pylint: disable=g-import-not-at-top
  from autoslim_jax import pipeline  # pylint: disable=g-import-not-at-top
  from autoslim_jax import resources  # pylint: disable=g-import-not-at-top
  from autoslim_jax import search  # pylint: disable=g-import-not-at-top

  defaults.check_config(config)
  if config.retrain.published:
    raise ValueError('configs that retrain published networks (retrain.published) are not '
                     'modelled here')
  dataset = config.dataset.name
  if train_images is None:
    if dataset not in TRAIN_IMAGES:
      raise ValueError(f'the number of training images of data set {dataset!r} is not known '
                       f'here (known: {", ".join(TRAIN_IMAGES)}); give --train-images')
    train_images = TRAIN_IMAGES[dataset]
  stages = defaults.parse_stages(config.stages)
  network, space = pipeline.build_network(config)
  resource_model = resources.ResourceModel(network)
  max_macs = float(resource_model(space.max_config())['macs'])
  min_macs = float(resource_model(space.min_config())['macs'])
  random_macs = random_member_macs(space, resource_model)
  train_split = train_images - config.dataset.heldout_size

  sn = config.supernet
  sn_steps, sn_images = whole_batches(train_split, sn.batch_size, sn.num_epochs)
  sandwich_macs = max_macs + min_macs + (sn.num_sandwich - 2) * random_macs
  supernet = {
      'flops': sn_images * sandwich_macs * FLOPS_PER_MAC * TRAIN_PASSES
               if 'supernet' in stages else 0.0,
      'steps': sn_steps, 'images': sn_images, 'sandwich_macs': sandwich_macs,
      'dtype': sn.compute_dtype}

  targets = search.parse_targets(config.search.targets, network)
  path = balanced_search(space, resource_model, targets)
  heldout = config.search.num_images or config.dataset.heldout_size
  search_work = {
      'flops': path['candidate_macs'] * heldout * FLOPS_PER_MAC if 'search' in stages else 0.0,
      'steps': path['steps'], 'candidates': path['candidates'], 'images': heldout,
      'dtype': 'float32'}  # the search scores the float32 supernet

  rt = config.retrain
  per_target = [path['target_macs'].get(t.name, path['min_macs']) for t in targets]
  families = 2 if rt.uniform_baseline else 1
  network_macs = [m for m in per_target for _ in range(families)]
  rt_steps, rt_images = whole_batches(train_split, rt.batch_size, rt.num_epochs)
  retrain = {
      'flops': rt_images * sum(network_macs) * FLOPS_PER_MAC * TRAIN_PASSES
               if 'retrain' in stages else 0.0,
      'networks': len(network_macs), 'steps_per_network': rt_steps, 'images': rt_images,
      'network_macs': network_macs, 'dtype': rt.compute_dtype}

  return {'model': config.model, 'dataset': dataset, 'max_macs': max_macs, 'min_macs': min_macs,
          'random_member_macs': random_macs, 'stages': stages,
          'supernet': supernet, 'search': search_work, 'retrain': retrain,
          'total_flops': supernet['flops'] + search_work['flops'] + retrain['flops']}


def stage_hours(work: dict[str, Any], hardware: Hardware, utilization: float) -> float:
  chip = CHIPS[hardware.chip]
  hours = 0.0
  for stage in ('supernet', 'search', 'retrain'):
    tflops = chip.bf16_tflops if work[stage]['dtype'] == 'bfloat16' else chip.f32_tflops
    rate = hardware.count * tflops * 1e12 * utilization
    hours += work[stage]['flops'] / rate / 3600
  return hours


def estimate(config_paths: Sequence[str], hardware: Sequence[str] | None = None,
             utilization: float = DEFAULT_UTILIZATION, prices: dict[str, float] | None = None,
             train_images: int | None = None) -> dict[str, Any]:
  """Work, hours and cost of each config on each hardware (its docstring's, or ``hardware``)."""
  if not 0 < utilization <= 1:
    raise ValueError(f'utilization must be in (0, 1] (a fraction of peak), got {utilization}')
  prices = {**{k: c.usd_per_chip_hour for k, c in CHIPS.items()}, **(prices or {})}
  rows, works = [], []
  for path in config_paths:
    module = load_config_module(path)
    specs = list(hardware) if hardware else docstring_hardware(module.__doc__ or '')
    if not specs:
      raise ValueError(f'{path}: its docstring names no hardware on a "Hardware:" line; give '
                       f'--hardware')
    name = os.path.splitext(os.path.basename(path))[0]
    work = config_work(module.get_config(), train_images)
    works.append({'config': name, **work})
    for spec in specs:
      target = parse_hardware(spec)
      hours = stage_hours(work, target, utilization)
      rows.append({'config': name, 'hardware': target.label, 'chips': target.count,
                   'chip': target.chip, 'work_pflop': work['total_flops'] / 1e15,
                   'hours': hours, 'usd_per_chip_hour': prices[target.chip],
                   'cost_usd': hours * target.count * prices[target.chip]})
  return {'note': NOTE.format(utilization=utilization), 'utilization': utilization,
          'prices_usd_per_chip_hour': prices, 'prices_are_assumptions': True,
          'measured': False, 'rows': rows, 'work': works}


NOTE = ('ESTIMATES from arithmetic, not measured run times: no accelerator run of these configs '
        'has been recorded yet. Hours assume an ASSUMED {utilization:g} of the vendors\' peak '
        'FLOP/s (compute-bound; the mobile networks\' depthwise convs, ImageNet JPEG decoding '
        'and the small steps of the CIFAR configs can make real runs several times slower). '
        'Costs use ASSUMED on-demand prices per '
        'chip-hour: replace them with your provider\'s current price list (--price=CHIP=USD).')


def _format_amount(value: float) -> str:
  """Two decimals below 10, whole numbers above (the inputs are rough: no false precision)."""
  return f'{value:.2f}' if value < 10 else f'{value:,.0f}'


def markdown(result: dict[str, Any]) -> str:
  lines = [f'> {result["note"]}', '',
           '| config | model | supernet PFLOP (steps x sandwich) | search PFLOP (steps, '
           'candidates x images) | retrain PFLOP (networks x steps) | total PFLOP |',
           '|---|---|---:|---:|---:|---:|']
  for w in result['work']:
    sn, se, rt = w['supernet'], w['search'], w['retrain']
    lines.append(
        f'| {w["config"]} | {w["model"]} | {sn["flops"] / 1e15:,.0f} ({sn["steps"]:,} x '
        f'{sn["sandwich_macs"] / 1e6:,.0f}M MACs) | {se["flops"] / 1e15:,.0f} ({se["steps"]}, '
        f'{se["candidates"]:,} x {se["images"]:,}) | {rt["flops"] / 1e15:,.0f} '
        f'({rt["networks"]} x {rt["steps_per_network"]:,}) | {w["total_flops"] / 1e15:,.0f} |')
  prices = ', '.join(f'{CHIPS[k].name} ${v:.2f}' for k, v in
                     result['prices_usd_per_chip_hour'].items())
  lines += ['', f'Assumed utilization: {result["utilization"]:g} of peak. Assumed on-demand '
            f'prices per chip-hour: {prices}.', '',
            '| config | hardware | work (PFLOP) | estimated hours | estimated cost (USD) |',
            '|---|---|---:|---:|---:|']
  for row in result['rows']:
    lines.append(f'| {row["config"]} | {row["hardware"]} | {row["work_pflop"]:,.0f} | '
                 f'{_format_amount(row["hours"])} | {_format_amount(row["cost_usd"])} |')
  return '\n'.join(lines)


def parse_prices(items: Sequence[str]) -> dict[str, float]:
  prices = {}
  for item in items:
    key, _, value = item.partition('=')
    if key not in CHIPS:
      raise ValueError(f'--price {item!r}: unknown chip {key!r}; known: {", ".join(CHIPS)}')
    try:
      prices[key] = float(value)
    except ValueError:
      raise ValueError(f'--price {item!r}: {value!r} is not a number of USD per chip-hour'
                       ) from None
    if prices[key] < 0:
      raise ValueError(f'--price {item!r}: a price cannot be negative')
  return prices


def shipped_config_paths() -> list[str]:
  return [os.path.join(CONFIG_DIR, f'{name}.py') for name in SHIPPED]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description='Estimated hours and cost of AutoSlim-JAX configs, from arithmetic (not '
      'measured). Utilization and prices are ASSUMPTIONS: replace them with your own.')
  parser.add_argument('configs', nargs='*', help='config files (default: the shipped configs: '
                      f'{", ".join(SHIPPED)})')
  parser.add_argument('--hardware', default='', help='comma-separated: v3-8, v4-32, '
                      'v5litepod-16, 1xA100, 8xH100 (default: what each config\'s docstring '
                      'names)')
  parser.add_argument('--utilization', type=float, default=DEFAULT_UTILIZATION,
                      help='ASSUMED fraction of peak FLOP/s reached (default: %(default)s)')
  parser.add_argument('--price', action='append', default=[], metavar='CHIP=USD',
                      help=f'on-demand USD per chip-hour; chips: {", ".join(CHIPS)} (defaults: '
                      'ASSUMED, see CHIPS in this file)')
  parser.add_argument('--train-images', type=int, default=None,
                      help='training images of the data set (known: '
                      f'{", ".join(f"{k} {v:,}" for k, v in TRAIN_IMAGES.items())})')
  parser.add_argument('--json', action='store_true', help='print JSON instead of Markdown')
  args = parser.parse_args(argv)
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # the package from this checkout when it is not installed
  try:
    hardware = [s.strip() for s in args.hardware.split(',') if s.strip()]
    for spec in hardware:
      parse_hardware(spec)  # refuse a bad name before any work
    result = estimate(args.configs or shipped_config_paths(), hardware or None,
                      args.utilization, parse_prices(args.price), args.train_images)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1) if args.json else markdown(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
