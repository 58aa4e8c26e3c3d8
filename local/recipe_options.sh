#!/usr/bin/env bash
# Sourced by local/prepare_corpus.sh (from the recipe dir, after its own `# begin options` block) with $root set
# to the repository root: the options of conf/corpus.sh, in this order of precedence (last wins):
# conf/corpus.sh's defaults, the values run.sh exports (its command line's), then --name value given here.
# Also activates the environment (path.sh) when run.sh has not.
_names=$(sed -n '/^# begin options/,/^# end options/s/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' conf/corpus.sh)
declare -A _given=()
for _v in $_names; do [ -z "${!_v+set}" ] || _given[$_v]=${!_v}; done
. conf/corpus.sh
for _v in "${!_given[@]}"; do printf -v "$_v" '%s' "${_given[$_v]}"; done
unset _names _given _v
help_message="Usage: bash local/data.sh [--name value ...]"
options_script=${BASH_SOURCE[1]}  # the script that sourced this one: its own options block
option_files=conf/corpus.sh
. "$root/local/parse_options.sh"
[ -n "${STOK_ROOT:-}" ] || . "$root/path.sh"
