#!/usr/bin/env bash
# Every benchmark, one after another, each appending its rows to bench/results.md.
#
#   bash bench/run_all.sh            # on any machine: CPU or the accelerator JAX finds
#
# Needs jax, flax, optax and numpy (orbax-checkpoint for the checkpoint benchmark); PyTorch, if
# installed, adds the slicing comparison. Batch sizes and held-out sizes default per platform
# (see each script's --help). On the 2-core CPU VM the whole run takes about 25 minutes
# (the sum of the parts recorded in bench/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/bench_conv_forms.py
python bench/bench_search.py
python bench/bench_supernet_step.py
python bench/bench_checkpoint.py
python bench/bench_resources.py
python bench/bench_input.py
python bench/bench_latency_backends.py
python bench/bench_compiles.py --second_seed
