#!/usr/bin/env bash
# Create (or complete) the project's virtual environment: bash local/install.sh [venv_dir]
# torch and torchaudio come first, pinned to builds that work together (see DEVELOPERS.md),
# then stok itself, editable, with its test extras.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-${STOK_VENV:-$root/.venv}}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==${STOK_TORCH_VERSION:-2.14.1}" "torchaudio==${STOK_TORCHAUDIO_VERSION:-2.11.0}"
"$venv/bin/python" -m pip install -q -e "$root[test]"
"$venv/bin/python" -c "import torch, torchaudio, stok; print('stok', stok.__version__, 'torch', torch.__version__, 'torchaudio', torchaudio.__version__)"
