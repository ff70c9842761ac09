#!/usr/bin/env bash
# Runs an AutoSlim-JAX config on one GPU host with all its GPUs: one process sees every local GPU
# and splits each batch over them (no --distributed). See --help and launch/README.md.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [options] [-- --config.KEY=VALUE ...]

Checks the GPUs (nvidia-smi), installs the package with the GPU extra (pip install -e '.[gpu]')
in a venv, runs the config with its output appended to a log file (tee), and prints where the
results are. Rerunning the same command resumes the run where it stopped.

Options:
  --config FILE      config file (default: configs/cifar10_mbv2.py)
  --run-name NAME    default: the config's file name without .py
  --workdir DIR      local folder or gs://BUCKET/PATH (default: ~/autoslim_runs/RUN_NAME)
  --data-dir DIR     tfds data dir, local or gs:// (default: tfds's own, ~/tensorflow_datasets)
  --log FILE         log file (default: ~/autoslim_runs/RUN_NAME.log)
  --venv DIR         virtual environment (default: ~/autoslim-venv-gpu; created if missing)
  --python PY        Python 3.11 or newer that creates the venv (default: python3.11)
  --skip-install     use the venv as it is (no pip install)
  --dry-run          print every command (prefixed with '+ ') without running any
  -h, --help         this text

Everything after -- is passed to the config as overrides, e.g.
  launch/gpu.sh --config=configs/cifar10_mbv2.py -- --config.supernet.num_epochs=10
EOF
}

# shellcheck source=launch/common.sh
source "$REPO_ROOT/launch/common.sh"

# --- options -----------------------------------------------------------------------------------

CONFIG=configs/cifar10_mbv2.py
RUN_NAME=''
WORKDIR=''
DATA_DIR=''
LOG=''
VENV="$HOME/autoslim-venv-gpu"
PYTHON=python3.11
SKIP_INSTALL=0
DRY_RUN=0
OVERRIDES=()

parse_args() {
  while (($#)); do
    if [[ $1 == --*=* ]]; then  # --name=value: split into --name value
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case $1 in
      --config) CONFIG=$(option_value "$@"); shift ;;
      --run-name) RUN_NAME=$(option_value "$@"); shift ;;
      --workdir) WORKDIR=$(option_value "$@"); shift ;;
      --data-dir) DATA_DIR=$(option_value "$@"); shift ;;
      --log) LOG=$(option_value "$@"); shift ;;
      --venv) VENV=$(option_value "$@"); shift ;;
      --python) PYTHON=$(option_value "$@"); shift ;;
      --skip-install) SKIP_INSTALL=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; OVERRIDES=("$@"); break ;;
      *) die "unknown argument '$1' (see --help; config overrides go after --)" ;;
    esac
    shift
  done
}

# --- validation: every mistake is reported before anything is installed or run ----------------

shipped_configs() {
  (cd "$REPO_ROOT" && printf '%s ' configs/*.py)
}

# Sets CONFIG to an absolute path (the run starts in the repository root).
check_config() {
  local path=$CONFIG
  if [[ -f $path ]]; then
    CONFIG=$(cd "$(dirname "$path")" && pwd)/$(basename "$path")
  elif [[ -f $REPO_ROOT/$path ]]; then
    CONFIG=$REPO_ROOT/$path
  else
    die "config file '$path' does not exist; shipped configs: $(shipped_configs)"
  fi
  [[ $CONFIG == *.py ]] || die "config '$path' is not a .py config file"
}

# A gs:// location must name a bucket; a local one becomes absolute (the run starts elsewhere).
check_location() {  # check_location OPTION VALUE: prints the checked value
  local option=$1 value=$2
  if [[ $value == gs://* ]]; then
    local bucket=${value#gs://}
    bucket=${bucket%%/*}
    [[ $bucket =~ ^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$ ]] ||
      die "$option '$value' does not name a bucket: give gs://BUCKET/PATH (a bucket name has 3 or more lowercase letters, digits, -, _ and .)"
    printf '%s' "${value%/}"
  elif [[ $value == *://* ]]; then
    die "$option '$value': only local paths and gs:// are supported"
  else
    [[ $value == /* ]] || value=$PWD/$value
    printf '%s' "${value%/}"
  fi
}

check_inputs() {
  check_config
  [[ -n $RUN_NAME ]] || RUN_NAME=$(basename "$CONFIG" .py)
  [[ $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "--run-name '$RUN_NAME' may hold only letters, digits, '.', '_' and '-'"
  WORKDIR=$(check_location --workdir "${WORKDIR:-$HOME/autoslim_runs/$RUN_NAME}")
  [[ -z $DATA_DIR ]] || DATA_DIR=$(check_location --data-dir "$DATA_DIR")
  LOG=${LOG:-$HOME/autoslim_runs/$RUN_NAME.log}
  [[ $LOG != gs://* ]] || die "--log '$LOG' must be a local file (tee writes it as the run goes)"
  # Absolute, as the run starts in the repository root.
  [[ $LOG == /* ]] || LOG=$PWD/$LOG
  [[ $VENV == /* ]] || VENV=$PWD/$VENV
  [[ $PYTHON =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python '$PYTHON' is not a command name"
  local arg
  for arg in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    [[ $arg =~ ^--config\.[A-Za-z0-9_.]+=.* ]] ||
      die "'$arg' after -- is not a config override; give --config.KEY=VALUE (e.g. --config.supernet.num_epochs=10)"
  done
}

# --- steps -------------------------------------------------------------------------------------

check_gpus() {
  local query=(nvidia-smi "--query-gpu=index,name,memory.total" "--format=csv,noheader")
  if ((DRY_RUN)); then
    show "${query[@]}"
    return 0
  fi
  command -v nvidia-smi >/dev/null ||
    die "nvidia-smi not found: this recipe is for a host with NVIDIA GPUs and their driver (on a CPU, run python -m autoslim_jax.main directly)"
  show "${query[@]}"
  local gpus
  gpus=$("${query[@]}") || die "nvidia-smi failed: is the NVIDIA driver loaded?"
  echo "$gpus"
  note "$(grep -c . <<<"$gpus") GPU(s): the batch is split over all of them"
}

install_package() {
  if ((SKIP_INSTALL)); then
    [[ -x $VENV/bin/python || $DRY_RUN -eq 1 ]] || die "--skip-install but there is no venv at $VENV"
    return 0
  fi
  if ((DRY_RUN)); then
    note "only if $VENV does not exist:"
    show "$PYTHON" -m venv "$VENV"
  elif [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or give --python"
    run_cmd "$PYTHON" -m venv "$VENV"
  fi
  run_cmd "$VENV/bin/pip" install -q --upgrade pip
  run_cmd "$VENV/bin/pip" install -q -e '.[gpu]'
}

run_config() {
  local command=("$VENV/bin/python" -m autoslim_jax.main --config="$CONFIG" --workdir="$WORKDIR")
  [[ -z $DATA_DIR ]] || command+=(--config.dataset.data_dir="$DATA_DIR")
  command+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
  run_cmd mkdir -p "$(dirname "$LOG")"
  # Appends, so that the log of a resumed run keeps the attempts before it.
  echo "+ $(quote_all "${command[@]}") 2>&1 | $(quote_all tee -a "$LOG")"
  if ((DRY_RUN)); then
    return 0
  fi
  local status=0
  "${command[@]}" 2>&1 | tee -a "$LOG" || status=$?
  if ((status)); then
    echo "error: the run stopped with status $status; see $LOG. Rerunning the same command resumes it." >&2
    exit "$status"
  fi
  note "results: $WORKDIR/results.md, $WORKDIR/results.json, plots in $WORKDIR/plots/, slim exports in $WORKDIR/export/; log: $LOG"
}

main() {
  parse_args "$@"
  check_inputs
  ((DRY_RUN)) && note "dry run: the commands below are printed, not run"
  check_gpus
  run_cmd cd "$REPO_ROOT"  # pip install -e . and the run start in the repository
  install_package
  run_config
}

main "$@"
