#!/bin/bash
# Ablations of the CIFAR-sample experiment (runs/results.md): what moves AutoSlim against uniform
# width, and the supernet's ranking, when one setting of the supernet or the search changes.
#
#   bash runs/cifar10_sample_ablations.sh BASE NPZ OUT [VARIANT ...]
#
# BASE: the workdir of the experiment these vary (python -m autoslim_jax.experiment
#   --config=configs/cifar10_sample_cpu.py --workdir=BASE --npz=NPZ), with its estimator study.
# Each variant is one experiment of the base's first seed in OUT/VARIANT: the same command with one
# config override, whose estimator study scores the base study's configs with the variant's
# supernet (--estimator_reference: their from-scratch accuracies do not depend on the supernet).
# For search-only variants the supernet does not depend on the setting: the base run's finished
# one is copied in and restored. (The uniform nets are retrained: each matches its searched
# net's MACs, so it changes with the search.) Variants (default: all, in this order):
#   long_supernet    supernet 9 epochs instead of 3
#   loss_score       the search keeps the candidate of least held-out loss, not most accuracy
#   no_distillation  the sandwich's smaller members learn the labels, not the max net's outputs
#   sandwich_4       4 members per step (the paper's n=4) instead of 3
#   search_all_heldout  the search scores candidates on all 660 held-out images, not 256
# Run time on the 2-core VM: runs/results.md. Writes OUT/ablations.md.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '5,7p' "$0"; exit 2
fi
BASE=$(realpath "$1"); NPZ=$(realpath "$2"); OUT=$3; shift 3
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(long_supernet loss_score no_distillation sandwich_4
                                       search_all_heldout)
REFERENCE=$BASE/estimator/estimator.json
SEED=$(python -c "import json; print(json.load(open('$REFERENCE'))['seed'])")

for variant in "${VARIANTS[@]}"; do
  reuse_supernet=false
  case $variant in
    long_supernet) override=--config.supernet.num_epochs=9.0 ;;
    loss_score) override=--config.search.score=loss; reuse_supernet=true ;;
    no_distillation) override=--config.supernet.inplace_distillation=False ;;
    sandwich_4) override=--config.supernet.num_sandwich=4 ;;
    search_all_heldout)
      override="--config.search.num_images=660 --config.search.batch_size=660"
      reuse_supernet=true ;;
    *) echo "unknown variant '$variant'; valid: long_supernet loss_score no_distillation" \
            "sandwich_4 search_all_heldout" >&2; exit 2 ;;
  esac
  run_dir=$OUT/$variant/seed_$SEED
  if $reuse_supernet && [ ! -e "$run_dir/supernet" ]; then
    mkdir -p "$run_dir"
    cp -r "$BASE/seed_$SEED/supernet" "$run_dir/"
  fi
  echo "== $variant: $override ($(date))"
  # shellcheck disable=SC2086  # the override may be two flags
  python -m autoslim_jax.experiment --config=configs/cifar10_sample_cpu.py --npz="$NPZ" \
      --workdir="$OUT/$variant" --seeds="$SEED" --estimator_reference="$REFERENCE" $override
done

python - "$BASE" "$OUT" "${VARIANTS[@]}" <<'PY'
import os, sys
from autoslim_jax import experiment, plots
base, out, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = experiment.compare_runs(base, {v: os.path.join(out, v) for v in variants})
table = plots.ablation_table(rows)
with open(os.path.join(out, 'ablations.md'), 'w') as f:
  f.write(table)
print(table)
PY
