# Sourced by run.sh and local/run_tests.sh: the project's Python environment and thread settings.
# The virtual environment is $STOK_ROOT/.venv unless STOK_VENV says otherwise; it is created
# (local/install.sh) the first time it is missing.
STOK_ROOT=${STOK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
STOK_VENV=${STOK_VENV:-$STOK_ROOT/.venv}
if [ ! -x "$STOK_VENV/bin/python" ] || ! "$STOK_VENV/bin/python" -c "import stok, torch, torchaudio" 2>/dev/null; then
  echo "path.sh: setting up the Python environment in $STOK_VENV (local/install.sh) ..." >&2
  bash "$STOK_ROOT/local/install.sh" "$STOK_VENV" || { echo "path.sh: install failed" >&2; return 1 2>/dev/null || exit 1; }
fi
export PATH="$STOK_VENV/bin:$PATH"
# this checkout's stok first, whatever the venv's editable install points at (several checkouts share one venv)
export PYTHONPATH="$STOK_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export STOK_ROOT STOK_VENV
