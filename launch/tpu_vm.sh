#!/usr/bin/env bash
# Runs an AutoSlim-JAX config on a Cloud TPU VM: one host (v4-8, v5litepod-8) or a pod slice
# with several workers (v4-32), every worker running the same command. See --help and
# launch/README.md.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=launch/tpu_vm.sh

# Where things live on every worker. The ~ is meant literally here: the worker's shell expands
# it in the commands sent over ssh.
# shellcheck disable=SC2088
REMOTE_REPO='~/autoslim-jax'
# shellcheck disable=SC2088
REMOTE_VENV='~/autoslim-venv'
REMOTE_ARCHIVE=autoslim-jax.tar.gz

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh ACTION [options] [-- --config.KEY=VALUE ...]

Actions:
  up        create the TPU VM (or reuse it if it exists), copy the code to every worker and
            install it there (pip install -e '.[tpu]' in a venv)
  run       up, then start the config on ALL workers at once in the background (nohup, one log
            file per worker), stream worker 0's log here, copy the logs to the bucket;
            --delete-after then deletes the VM. Ctrl-C stops only the streaming: the run goes on.
  logs      stream a worker's log (--worker, default 0) until its run ends
  prepare   prepare a tfds data set once into gs://BUCKET/tfds from worker 0, as array_record
            files (installs TensorFlow there for this: the runs never import it). Do this before
            any run: the pipeline reads prepared data only
  delete    delete the TPU VM (outputs in the bucket stay)

Options:
  --name NAME               TPU VM name (default: autoslim)
  --zone ZONE               zone, required (e.g. us-central2-b for v4, us-west4-a for v5e)
  --project PROJECT         Google Cloud project (default: gcloud's configured project)
  --accelerator-type TYPE   vN-M, vNp-M, vNe-M or vNlitepod-M (default: v4-8). Up to 8 cores or
                            chips is one host; more is a pod slice with several workers.
  --runtime-version V       TPU software version (default by type: tpu-ubuntu2204-base for v2-v4,
                            v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p,
                            v2-alpha-tpuv6e for v6e)
  --spot                    create a spot TPU VM (cheaper, can be preempted; rerun `run` with the
                            same --run-name after a preemption: the pipeline resumes)
  --config FILE             config inside this repository (default: configs/mbv2.py)
  --bucket gs://BUCKET      Cloud Storage bucket, required for run and prepare: the workdir is
                            gs://BUCKET/runs/RUN_NAME, the tfds data dir gs://BUCKET/tfds
  --run-name NAME           default: the config's file name without .py
  --repo URL                workers clone this git URL instead of receiving a copy of this
                            checkout (copied with `tpu-vm scp --worker=all`)
  --ref REF                 branch, tag or commit to check out after cloning --repo
  --python PY               Python (3.11 or newer) on the workers (default: python3.11; installed
                            with apt if missing)
  --worker N                the worker whose log `logs` streams (default: 0)
  --dataset NAME            tfds data set for `prepare` (e.g. cifar10, imagenet2012)
  --manual-dir DIR          ImageNet's manual download for `prepare` (default:
                            gs://BUCKET/manual: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)
  --delete-after            run: delete the TPU VM when the run ends (not after Ctrl-C)
  --dry-run                 print every command (prefixed with '+ ') without running any
  -h, --help                this text

Everything after -- is passed to the config as overrides, e.g.
  launch/tpu_vm.sh run --zone=us-central2-b --accelerator-type=v4-32 --bucket=gs://my-bucket \
    --config=configs/mbv2.py -- --config.supernet.num_epochs=10
On a pod slice the command on every worker gets --distributed (jax.distributed.initialize()
finds the other workers by itself on Cloud TPU).
EOF
}

# shellcheck source=launch/common.sh
source "$REPO_ROOT/launch/common.sh"

# --- options -----------------------------------------------------------------------------------

ACTION=''
NAME=autoslim
ZONE=''
PROJECT=''
ACCELERATOR=v4-8
RUNTIME=''
SPOT=0
CONFIG=configs/mbv2.py
BUCKET=''
RUN_NAME=''
REPO_URL=''
REF=''
PYTHON=python3.11
WORKER=0
DATASET=''
MANUAL_DIR=''
DELETE_AFTER=0
DRY_RUN=0
OVERRIDES=()

parse_args() {
  while (($#)); do
    if [[ $1 == --*=* ]]; then  # --name=value: split into --name value
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case $1 in
      up | run | logs | prepare | delete)
        [[ -z $ACTION ]] || die "two actions given: '$ACTION' and '$1'; give one"
        ACTION=$1 ;;
      --name) NAME=$(option_value "$@"); shift ;;
      --zone) ZONE=$(option_value "$@"); shift ;;
      --project) PROJECT=$(option_value "$@"); shift ;;
      --accelerator-type) ACCELERATOR=$(option_value "$@"); shift ;;
      --runtime-version) RUNTIME=$(option_value "$@"); shift ;;
      --spot) SPOT=1 ;;
      --config) CONFIG=$(option_value "$@"); shift ;;
      --bucket) BUCKET=$(option_value "$@"); shift ;;
      --run-name) RUN_NAME=$(option_value "$@"); shift ;;
      --repo) REPO_URL=$(option_value "$@"); shift ;;
      --ref) REF=$(option_value "$@"); shift ;;
      --python) PYTHON=$(option_value "$@"); shift ;;
      --worker) WORKER=$(option_value "$@"); shift ;;
      --dataset) DATASET=$(option_value "$@"); shift ;;
      --manual-dir) MANUAL_DIR=$(option_value "$@"); shift ;;
      --delete-after) DELETE_AFTER=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; OVERRIDES=("$@"); break ;;
      -*) die "unknown option '$1' (see --help)" ;;
      *) die "unknown action '$1'; valid actions: up, run, logs, prepare, delete" ;;
    esac
    shift
  done
  [[ -n $ACTION ]] || die "no action given; valid actions: up, run, logs, prepare, delete (see --help)"
}

# --- validation: every mistake is reported before any gcloud command ---------------------------

check_name() {
  [[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name '$NAME' is not a valid TPU name: lowercase letters, digits and hyphens, starting with a letter"
}

check_zone() {
  [[ -n $ZONE ]] || die "missing --zone (e.g. us-central2-b for v4, us-west4-a for v5e; near your bucket)"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' does not look like a zone such as us-central2-b"
}

check_accelerator() {
  [[ $ACCELERATOR =~ ^v[0-9]+(p|e|litepod)?-[0-9]+$ ]] ||
    die "--accelerator-type '$ACCELERATOR' is not a TPU type; valid forms: vN-M (v4-8, v4-32), vNlitepod-M (v5litepod-8), vNp-M (v5p-8), vNe-M (v6e-8)"
}

# The software version Google documents for JAX on each TPU generation.
default_runtime() {
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default --runtime-version for '$ACCELERATOR'; give one (gcloud compute tpus tpu-vm versions list)" ;;
  esac
}

# A slice of more than 8 cores or chips spans several hosts (workers).
is_pod_slice() {
  ((${ACCELERATOR##*-} > 8))
}

check_bucket() {
  [[ -n $BUCKET ]] || die "missing --bucket gs://BUCKET (the workdir and the tfds data live there)"
  BUCKET=${BUCKET%/}
  [[ $BUCKET == gs://* ]] || die "--bucket '$BUCKET' must start with gs:// (e.g. gs://my-bucket): every worker reads and writes the same Cloud Storage bucket"
  [[ ${BUCKET#gs://} =~ ^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$ ]] ||
    die "--bucket '$BUCKET' is not a bucket name like gs://my-bucket (3 or more lowercase letters, digits, -, _ and .; no path)"
}

shipped_configs() {
  (cd "$REPO_ROOT" && printf '%s ' configs/*.py)
}

# Sets CONFIG to the config's path relative to the repository root (the workers' copy).
check_config() {
  local path=$CONFIG absolute
  if [[ -f $path ]]; then
    absolute=$(cd "$(dirname "$path")" && pwd)/$(basename "$path")
  elif [[ -f $REPO_ROOT/$path ]]; then
    absolute=$REPO_ROOT/$path
  else
    die "config file '$path' does not exist; shipped configs: $(shipped_configs)"
  fi
  [[ $absolute == "$REPO_ROOT"/* ]] ||
    die "config '$path' is outside the repository $REPO_ROOT: the workers get a copy of the repository, so put it under configs/"
  [[ $absolute == *.py ]] || die "config '$path' is not a .py config file"
  CONFIG=${absolute#"$REPO_ROOT"/}
}

check_run_name() {
  if [[ -z $RUN_NAME ]]; then
    RUN_NAME=$(basename "$CONFIG" .py)
  fi
  [[ $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "--run-name '$RUN_NAME' may hold only letters, digits, '.', '_' and '-'"
}

check_overrides() {
  local arg
  for arg in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    [[ $arg =~ ^--config\.[A-Za-z0-9_.]+=.* ]] ||
      die "'$arg' after -- is not a config override; give --config.KEY=VALUE (e.g. --config.supernet.num_epochs=10)"
  done
}

check_inputs() {
  check_name
  check_zone
  [[ -z $PROJECT || $PROJECT =~ ^[a-z][-a-z0-9:.]{4,}[a-z0-9]$ ]] || die "--project '$PROJECT' is not a project id"
  case $ACTION in
    up | run | prepare)
      check_accelerator
      [[ -n $RUNTIME ]] || RUNTIME=$(default_runtime)
      [[ -n $REF && -z $REPO_URL ]] && die "--ref '$REF' needs --repo URL (without --repo this checkout is copied)"
      [[ $PYTHON =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python '$PYTHON' is not a command name"
      if [[ -z $REPO_URL ]] && ! git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        die "$REPO_ROOT is not a git checkout, so its files cannot be listed for copying; give --repo URL"
      fi ;;
  esac
  case $ACTION in
    run)
      check_bucket
      check_config
      check_run_name
      check_overrides ;;
    prepare)
      check_bucket
      [[ -n $DATASET ]] || die "prepare needs --dataset (a tfds name such as cifar10 or imagenet2012)"
      [[ $DATASET =~ ^[a-z0-9_]+(/[A-Za-z0-9_.]+)?(:[0-9.]+)?$ ]] || die "--dataset '$DATASET' is not a tfds name such as cifar10" ;;
    logs)
      check_run_name
      [[ $WORKER =~ ^[0-9]+$ ]] || die "--worker '$WORKER' must be a worker number (0, 1, ...)" ;;
  esac
  if ((DELETE_AFTER)) && [[ $ACTION != run ]]; then
    die "--delete-after goes with the run action; to delete the VM now use the delete action"
  fi
  if ((${#OVERRIDES[@]})) && [[ $ACTION != run ]]; then
    die "config overrides after -- go with the run action, not '$ACTION'"
  fi
}

# --- gcloud steps ------------------------------------------------------------------------------

scope_flags() {  # zone and project, for every gcloud tpu-vm command
  SCOPE=(--zone="$ZONE")
  [[ -z $PROJECT ]] || SCOPE+=(--project="$PROJECT")
}

ssh_workers() {  # ssh_workers WORKER COMMAND: run COMMAND on one worker or on all
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" --worker="$1" --command="$2"
}

create_command() {
  CREATE=(gcloud compute tpus tpu-vm create "$NAME" "${SCOPE[@]}" --accelerator-type="$ACCELERATOR"
    --version="$RUNTIME")
  ((SPOT)) && CREATE+=(--spot)
  return 0
}

# Creates the TPU VM unless one of that name exists (then checks it is usable and of that type).
ensure_tpu() {
  local describe=(gcloud compute tpus tpu-vm describe "$NAME" "${SCOPE[@]}"
    --format='value(state,acceleratorType)')
  create_command
  if ((DRY_RUN)); then
    show "${describe[@]}"
    note "only if describe finds no TPU VM named $NAME:"
    show "${CREATE[@]}"
    return 0
  fi
  show "${describe[@]}"
  local found state type
  found=$("${describe[@]}" 2>/dev/null) || found=''
  if [[ -z $found ]]; then
    run_cmd "${CREATE[@]}"
    return 0
  fi
  read -r state type <<<"$found"
  type=${type##*/}
  [[ $type == "$ACCELERATOR" ]] ||
    die "TPU VM $NAME exists as $type, not $ACCELERATOR: delete it ($PROG delete $(where)) or choose another --name"
  case $state in
    READY) note "reusing TPU VM $NAME ($type, READY)" ;;
    PREEMPTED | TERMINATED)
      die "TPU VM $NAME is $state (a spot VM cannot be restarted): $PROG delete $(where), then run again" ;;
    *) die "TPU VM $NAME is $state; wait until it is READY (gcloud compute tpus tpu-vm describe $NAME --zone=$ZONE)" ;;
  esac
}

# This checkout's files (tracked and untracked, not the ignored ones) as one archive. git still
# lists tracked files deleted from the working tree: only existing ones go to tar (a portable
# filter: macOS's tar has no --ignore-failed-read). The printed pipeline is the one that runs.
archive_checkout() {
  local root pipeline
  root=$(quote "$REPO_ROOT")
  pipeline="git -C $root ls-files -z --cached --others --exclude-standard"
  pipeline+=" | (cd $root && while IFS= read -r -d '' f; do if [ -e \"\$f\" ]; then printf '%s\\0' \"\$f\"; fi; done)"
  pipeline+=" | tar -C $root --null -T - -czf $(quote "$1")"
  echo "+ $pipeline"
  ((DRY_RUN)) || bash -o pipefail -c "$pipeline"
}

copy_code() {
  if [[ -n $REPO_URL ]]; then
    local clone
    clone="rm -rf $REMOTE_REPO && git clone --quiet $(quote "$REPO_URL") $REMOTE_REPO"
    [[ -z $REF ]] || clone+=" && git -C $REMOTE_REPO checkout --quiet $(quote "$REF")"
    ssh_workers all "$clone"
    return 0
  fi
  local archive="${TMPDIR:-/tmp}/autoslim-jax-$NAME.tar.gz"
  archive_checkout "$archive"
  run_cmd gcloud compute tpus tpu-vm scp "$archive" "$NAME:$REMOTE_ARCHIVE" "${SCOPE[@]}" --worker=all
  ssh_workers all "rm -rf $REMOTE_REPO && mkdir -p $REMOTE_REPO && tar -xzf $REMOTE_ARCHIVE -C $REMOTE_REPO"
}

# The package with the TPU extra, in a venv on every worker (the system Python of the TPU images
# is older than the 3.11 the package needs).
install_package() {
  ssh_workers all "set -e; command -v $PYTHON >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q $PYTHON $PYTHON-venv; }; [ -x $REMOTE_VENV/bin/python ] || $PYTHON -m venv $REMOTE_VENV; $REMOTE_VENV/bin/pip install -q --upgrade pip; cd $REMOTE_REPO && $REMOTE_VENV/bin/pip install -q -e \".[tpu]\""
}

up() {
  ensure_tpu
  copy_code
  install_package
}

# One log and one pid file per worker and run, in the worker's home directory (~ expanded there).
# shellcheck disable=SC2088
log_file() { echo "~/autoslim-$RUN_NAME.log"; }
# shellcheck disable=SC2088
pid_file() { echo "~/autoslim-$RUN_NAME.pid"; }

# The pipeline command every worker runs (the same on all; JAX tells them apart).
main_command() {
  local command=("$REMOTE_VENV/bin/python" -m autoslim_jax.main --config="$CONFIG"
    --workdir="$BUCKET/runs/$RUN_NAME")
  is_pod_slice && command+=(--distributed)
  command+=(--config.dataset.data_dir="$BUCKET/tfds" ${OVERRIDES[@]+"${OVERRIDES[@]}"})
  # The venv path stays unquoted so that the worker's shell expands its ~.
  printf '%s %s' "${command[0]}" "$(quote_all "${command[@]:1}")"
}

# Starts the run in the background on every worker: immune to the ssh session ending (nohup,
# SIGHUP ignored), its output appended to a log file per worker, ending with its exit status.
start_run() {
  local log pid
  log=$(log_file)
  pid=$(pid_file)
  ssh_workers all "cd $REMOTE_REPO && if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then echo \"a run named $RUN_NAME is still going on \$(hostname); use the logs action or another --run-name\" >&2; exit 3; fi; { (trap \"\" HUP; nohup $(main_command); echo \"autoslim-jax: exit status \$?\") >> $log 2>&1 < /dev/null & echo \$! > $pid; }"
}

# Follows a worker's log until its run ends (tail --pid); Ctrl-C leaves the run going.
stream_log() {
  local log pid
  log=$(log_file)
  pid=$(pid_file)
  ssh_workers "$1" "tail -n +1 --pid=\"\$(cat $pid)\" -F $log"
}

# The run's exit status on worker 0, from the last line of its log.
run_status() {
  local command
  command=(gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" --worker=0 --command="tail -n 1 $(log_file)")
  show "${command[@]}"
  if ((DRY_RUN)); then
    STATUS=0
    return 0
  fi
  local last
  last=$("${command[@]}" 2>/dev/null) || last=''
  if [[ $last =~ exit\ status\ ([0-9]+) ]]; then
    STATUS=${BASH_REMATCH[1]}
  else
    STATUS=1
    echo "warning: could not read the run's exit status from worker 0's log (last line: '$last')" >&2
  fi
}

# Keeps every worker's log beside the run's outputs (the VM's disk goes with the VM).
save_logs() {
  ssh_workers all "gcloud storage cp $(log_file) $BUCKET/runs/$RUN_NAME/logs/\$(hostname).log" ||
    echo "warning: the logs were not copied to $BUCKET/runs/$RUN_NAME/logs/" >&2
}

# --name, --zone and --project as given: for the commands the messages suggest.
where() {
  printf -- '--name=%s --zone=%s%s' "$NAME" "$ZONE" "${PROJECT:+ --project=$PROJECT}"
}

delete_tpu() {
  run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}" --quiet
}

run() {
  if is_pod_slice; then
    note "$ACCELERATOR is a pod slice: every worker runs the config with --distributed; prepare the data set once before ($PROG prepare ...), not in the run"
  fi
  up
  start_run
  note "streaming worker 0's log; Ctrl-C stops the streaming only (resume it: $PROG logs $(where) --run-name=$RUN_NAME)"
  if ! stream_log 0; then
    echo "streaming stopped; the run may still be going ($PROG logs ...). The TPU VM $NAME is kept." >&2
    exit 1
  fi
  run_status
  save_logs
  ((DRY_RUN)) || note "run $RUN_NAME ended with status $STATUS; outputs: $BUCKET/runs/$RUN_NAME (results.md, results.json, plots/, export/)"
  if ((DELETE_AFTER)); then
    delete_tpu
  else
    note "the TPU VM $NAME stays up (and billed) until: $PROG delete $(where)"
  fi
  return "$STATUS"
}

prepare() {
  up
  local build
  # Preparing needs TensorFlow (the prepare extra), once; the runs read the array_record files
  # with tfds.data_source and never import it.
  build="cd $REMOTE_REPO && $REMOTE_VENV/bin/pip install -q -e \".[tpu,prepare]\" && $REMOTE_VENV/bin/tfds build $(quote "$DATASET") --data_dir=$(quote "$BUCKET/tfds") --file_format=array_record"
  if [[ $DATASET == imagenet2012* ]]; then
    build+=" --manual_dir=$(quote "${MANUAL_DIR:-$BUCKET/manual}")"
  fi
  ssh_workers 0 "$build"
}

main() {
  parse_args "$@"
  check_inputs
  scope_flags
  ((DRY_RUN)) && note "dry run: the commands below are printed, not run"
  case $ACTION in
    up) up ;;
    run) run ;;
    logs) stream_log "$WORKER" ;;
    prepare) prepare ;;
    delete) delete_tpu ;;
  esac
}

main "$@"
