"""Latency of the zoo's slim networks where they run: XLA:CPU (the ``jax`` backend) against
onnxruntime (their exported ONNX model, BatchNorm folded), batch 1, one CPU thread, at a few
uniform widths; the measurements of ``config.search.latency_backend`` and ``profile
--latency_backend``.

  python bench/bench_latency_backends.py
  python bench/bench_latency_backends.py --models=mobilenet_v2 --widths=0.5,1.0 --rounds=5

Each network is measured by the package's latency worker (``autoslim_jax.latency``: a process
pinned to one CPU, random weights, median of --repeats calls after warm-up); --rounds measures
every width that many times, alternating the backends, and reports the median and the range of
the rounds' medians, so the spread on a shared machine shows. Needs the onnx extra
(``pip install -e '.[onnx]'``). Appends a row per network and width to bench/results.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import latency  # pylint: disable=wrong-import-position
from autoslim_jax import models  # pylint: disable=wrong-import-position

BACKENDS = ('jax', 'onnxruntime')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='mobilenet_v1,mobilenet_v2,mnasnet,resnet50')
  parser.add_argument('--widths', default='0.5,0.75,1.0')
  parser.add_argument('--layout', default='imagenet', help='imagenet (224x224) or cifar (32x32)')
  parser.add_argument('--image_size', type=int, default=None)
  parser.add_argument('--repeats', type=int, default=50)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args(argv)
  if common.SMOKE:
    args.models, args.widths, args.layout, args.image_size = 'mobilenet_v2', '0.5', 'cifar', 8
    args.repeats, args.rounds = 2, 1
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  widths = [float(w) for w in args.widths.split(',')]
  rows = []
  for model in args.models.split(','):
    kwargs = dict(layout=args.layout, width_mult=max(widths))
    if args.image_size:
      kwargs['image_size'] = args.image_size
    network = models.create_network(model, **kwargs)
    configs = [network.uniform_config(w) for w in widths]
    medians = {backend: [[] for _ in widths] for backend in BACKENDS}
    meters = {backend: latency.LatencyMeter(model, kwargs, warmup=5, repeats=args.repeats,
                                            backend=backend) for backend in BACKENDS}
    try:
      for _ in range(args.rounds):
        for i, config in enumerate(configs):
          for backend in BACKENDS:
            medians[backend][i].append(meters[backend].measure(config))
    finally:
      for meter in meters.values():
        meter.close()
    for i, width in enumerate(widths):
      jax_ms, ort_ms = (statistics.median(medians[b][i]) for b in BACKENDS)
      spread = '; '.join(f'{b} {min(medians[b][i]):.3f}-{max(medians[b][i]):.3f}'
                         for b in BACKENDS)
      rows.append(common.row(
          'slim net latency, jax vs onnxruntime',
          f'{model} {args.layout} {network.input_shape[0]}px {width}x, batch 1, 1 thread, '
          f'median of {args.repeats} calls, median of {args.rounds} rounds',
          f'jax {jax_ms:.3f} ms, onnxruntime {ort_ms:.3f} ms ({jax_ms / ort_ms:.2f}x); rounds '
          f'{spread} ms', packages=('jax', 'flax', 'numpy', 'onnx', 'onnxruntime')))
  common.append_results(rows)


if __name__ == '__main__':
  main()
