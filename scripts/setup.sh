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

# Optional: Debian's chromium, for the web chat page test (tests/serving/test_page.py skips without it).
# Only as root on Debian/Ubuntu with apt; OPENOVIS_NO_CHROMIUM=1 skips it. Failure is not an error.
if [ "${OPENOVIS_NO_CHROMIUM:-0}" != 1 ] && [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] \
  && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  { apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
    || echo "setup.sh: chromium not installed; the browser test will be skipped"
fi
