"""Dumps the examples one process of a multi-process run reads (tests/test_multihost.py).

  python tests/multihost_reads.py OUT.npz COORDINATOR NUM_PROCESSES PROCESS_ID CONFIG_OVERRIDES...

Joins the run like ``python -m autoslim_jax.main --coordinator_address=...`` does, builds the
quickstart config with the overrides (``key=value``), and writes this process's first epoch of
training batches and its held-out evaluation batches.
"""

import ast
import sys

import jax
import numpy as np


def main(out, coordinator, num_processes, process_id, *overrides):
  jax.distributed.initialize(coordinator, int(num_processes), int(process_id))
  sys.path.insert(0, 'configs')  # run from the repository root, as the test does
  import quickstart  # pylint: disable=g-import-not-at-top
  from autoslim_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from autoslim_jax import parallel  # pylint: disable=g-import-not-at-top

  config = quickstart.get_config()
  for override in overrides:
    key, value = override.split('=', 1)
    section, field = key.split('.')
    config[section][field] = ast.literal_eval(value)
  source = input_pipeline.create_source(config.dataset)
  cfg = config.supernet
  steps = input_pipeline.steps_per_epoch(source, cfg.batch_size)
  train = input_pipeline.train_batches(source, cfg.batch_size, config.seed, 0,
                                       config.dataset.augmentation)
  train_images = np.concatenate([next(train)['image'] for _ in range(steps)])
  heldout = list(input_pipeline.eval_batches(source, 'heldout', config.search.batch_size))
  np.savez(out, train_images=train_images,
           heldout_images=np.concatenate([b['image'] for b in heldout]),
           heldout_mask=np.concatenate([b['mask'] for b in heldout]),
           shards=np.array(parallel.local_shards()))


if __name__ == '__main__':
  main(*sys.argv[1:])
