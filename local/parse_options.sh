#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by run.sh after it declares its options.
#
# Every shell variable declared before this file is sourced can be set with `--name value`
# (`--some-name` and `--some_name` are the same). `--help` prints every option declared between
# `# begin options` and `# end options` in the calling script and in the files named in
# `${option_files}` (the recipe's conf/corpus.sh), with its current value and its comment
# (`${options_script}` names the calling script when it changed directory since it started).
# An unknown option or a missing value is an error that names it.

_stok_print_options() {
  local f line name comment
  for f in "$@"; do
    [ -f "$f" ] || continue
    echo "Options from $f:"
    sed -n '/^# begin options/,/^# end options/p' "$f" | grep -E '^[A-Za-z_][A-Za-z0-9_]*=' |
      while IFS= read -r line; do
        name=${line%%=*}
        comment=""
        case "$line" in *"# "*) comment=${line#*# };; esac
        printf '  --%-20s %-28s %s\n' "$name" "(${!name})" "$comment"
      done
  done
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      [ -n "${help_message:-}" ] && printf '%s\n\n' "$help_message"
      _stok_print_options "${options_script:-$0}" ${option_files:-}
      exit 0 ;;
    --*=*)
      _name=${1%%=*}; _value=${1#*=}; shift; set -- "$_name" "$_value" "$@"; continue ;;
    --*)
      _name=${1#--}; _name=${_name//-/_}
      if [ -z "${_name}" ] || ! declare -p "${_name}" >/dev/null 2>&1; then
        echo "$0: unknown option $1 (see $0 --help)" >&2; exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2; exit 1
      fi
      printf -v "${_name}" '%s' "$2"
      shift 2 ;;
    *)
      break ;;
  esac
done
unset _name _value
