"""Greedy search and BatchNorm calibration of one fixed supernet, in float64, on however many
devices this process has (tests/test_search.py runs it on 1 and on 8).

  XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_ENABLE_X64=1 \
    python tests/search_on_devices.py WORKDIR OUT.json

Writes the trajectory (unit, held-out accuracy and loss of every step), the first config under
the target, and the calibrated BatchNorm statistics of that config.
"""

import json
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import mock_cifar_config  # pylint: disable=g-import-not-at-top,wrong-import-position

from autoslim_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from autoslim_jax import search  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(workdir, out):
  config = mock_cifar_config('mobilenet_v1', dict(width_mult=0.5, image_size=8, in_channels=1,
                                                  num_classes=10))
  config.dataset.update(dict(name='digits', heldout_size=96, augmentation='none'))
  config.search.update(dict(batch_size=48, chunk_size=5))
  config.search.targets.macs_of_width = (0.4,)
  config.calibration.update(dict(batch_size=48, num_images=96))
  network = models.create_network('mobilenet_v1', dtype=jnp.float64,
                                   **config.model_kwargs.to_dict())
  space = network.channel_space(config.groups, config.min_width / network.max_width_mult)
  source = input_pipeline.create_source(config.dataset)
  variables = jax.device_get(network.init(jax.random.key(0), batch_size=2))
  # Non-trivial weights: the initial BatchNorm scale of 1 and bias of 0 would make every
  # candidate of the first steps tie.
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float64) * rng.uniform(0.5, 1.5, np.shape(x)), variables)
  summary = search.run_search(config, workdir, network, space, variables, source)
  (target,) = summary['targets']
  mesh = parallel.make_mesh()
  calibrated = evaluate.calibrate_batch_stats(
      evaluate.make_calibration_step(network.supernet(), mesh), parallel.replicate(variables, mesh),
      input_pipeline.calibration_batches(source, 96, 48), space.as_arrays(target['channels']),
      mesh)
  flat = {'/'.join(k): np.asarray(v).tolist()
          for k, v in flax.traverse_util.flatten_dict(calibrated).items()}
  trajectory = search.read_trajectory(workdir)
  with open(out, 'w') as f:
    json.dump({'devices': jax.device_count(),
               'steps': [[s['unit'], s['heldout_accuracy'], s['heldout_loss']]
                         for s in trajectory],
               'target': target['channels'], 'calibrated': flat}, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
