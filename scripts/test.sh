#!/usr/bin/env bash
# Sets up and runs the default test tier (CPU, no network). Extra arguments go to pytest,
# e.g. `scripts/test.sh -m slow` for the slow tier or `-m gpu` on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Optional: Debian's chromium, for the web chat page test (tests/serving/test_page.py skips without it).
# Only as root on Debian/Ubuntu with apt; OPENOVIS_NO_CHROMIUM=1 skips it. Failure is not an error.
if [ "${OPENOVIS_NO_CHROMIUM:-0}" != 1 ] && [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] \
  && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  { apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
    || echo "test.sh: chromium not installed; the browser test will be skipped"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
