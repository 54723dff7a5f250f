#!/usr/bin/env bash
# Create ./.venv with what the project needs: the runtime requirements (requirements.txt) or, with
# `setup_env.sh requirements-dev.txt` (the test command), the test-only ones too. On a machine without an
# NVIDIA GPU the CPU build of torch (torch==2.13.0) is installed first so pip does not pull a CUDA build.
# Last, the project itself in editable mode (pyproject.toml; its dependencies are the ones just installed):
# its packages import from any folder, `python scripts/x.py` works as `python -m scripts.x` does, and the
# knowhira-train / knowhira-analyze / knowhira-analyze-adapter / knowhira-download commands exist.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -r "${1:-requirements.txt}"
.venv/bin/pip install -q -e . --no-deps
