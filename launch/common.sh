# Helpers launch/tpu_vm.sh and launch/gpu.sh share: errors, notes, and printing every command
# before running it (or only printing it, with --dry-run: the caller sets DRY_RUN=0 or 1).
# shellcheck shell=bash

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "# $*"
}

# Prints one argument so that the printed line, pasted into bash, gives the same argument
# (--flag='value with spaces' for readability; the shell sees one word either way).
quote() {
  local arg=$1
  if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$arg"
  elif [[ $arg =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out='' arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

show() {
  echo "+ $(quote_all "$@")"
}

# Prints a command, then runs it unless --dry-run.
run_cmd() {
  show "$@"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

option_value() {  # option_value OPTION VALUE: the value, or an error naming the option
  if [[ $# -lt 2 || -z $2 || $2 == --* ]]; then
    die "option $1 needs a value (see --help)"
  fi
  printf '%s' "$2"
}
