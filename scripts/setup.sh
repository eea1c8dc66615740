#!/usr/bin/env bash
# Installs openovis (editable, with test tools) into the current Python environment.
# PyTorch: an existing install is kept; where none is present this asks for torch==2.13.0 (the CPU
# build this project is developed against). Any torch >= 2.4 works: install your own first to use it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"

