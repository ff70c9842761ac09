r"""The CIFAR-10 sample searched for an onnxruntime latency target: the paper's latency claim at
small scale, beside a MACs target in the same run.

Command:  python -m autoslim_jax.main --config=configs/cifar10_sample_latency_cpu.py \
              --workdir=W --config.dataset.path=PATH/cifar10_subset.npz
Hardware: a 2-core CPU (no accelerator); pip install -e '.[onnx]' (onnxruntime measures).
Run time: about 30 minutes on the 2-core development VM (configs/cifar10_sample_cpu.py's
  supernet and search; 4 nets retrained 6 epochs). Recorded in runs/latency_onnxruntime.md.
Expected: configs/cifar10_sample_cpu.py's recipe with two targets: the latency of the uniform
  0.175x net in onnxruntime on one CPU thread of the development VM (0.65 ms at batch 1; set
  your own machine's with `python -m autoslim_jax.profile --layout=cifar --width=0.175
  --max_width=0.35 --latency --latency_backend=onnxruntime`), and that net's MACs. Each
  searched net is retrained beside the uniform net of the same measured latency (resp. MACs).
  At 32x32 a slim net's latency is mostly per-layer overhead (0.85 ms at 0.35x, 0.6 ms at
  0.12x), so the latency-matched uniform net can be much narrower or wider than the
  MACs-matched one; the measurement spread is about 10%.
"""

import importlib.util
import os


def _sample_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cifar10_sample_cpu.py')
  spec = importlib.util.spec_from_file_location('_cifar10_sample_cpu', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _sample_config()
  config.search.targets.macs_of_width = (0.175,)
  config.search.targets.latency_ms = (0.65,)
  config.search.latency_backend = 'onnxruntime'
  config.search.latency_threads = 1
  config.search.latency_repeats = 200  # sub-millisecond times: many repeats for a stable median
  return config
