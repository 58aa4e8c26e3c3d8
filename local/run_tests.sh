#!/usr/bin/env bash
# Run the test suite (creating the environment first if it is missing): bash local/run_tests.sh [pytest args]
# pytest's exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/path.sh" || exit 1
cd "$root"
python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "run_tests.sh: pytest collected no tests" >&2; exit 1; fi
exit $rc
