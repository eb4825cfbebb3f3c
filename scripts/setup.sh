#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
# Pinned torch first: these builds lie on the project's machines; a bare "torch" would fetch a newer CUDA build.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install --quiet -e '.[all,dev]'
