#!/usr/bin/env bash
# Sets up and runs the default test tier (CPU, no network). Extra arguments go to pytest,
# e.g. `scripts/test.sh -m slow` for the slow tier or `-m gpu` on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
