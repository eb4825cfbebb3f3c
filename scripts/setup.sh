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

# The client generators of tests/integration/client/test_generated_clients.py (docs/operations.md, "Generating a
# client"), kept out of .venv: openapi-python-client pins its own pydantic, httpx, ruff and typer. Each is
# installed again only when its pins change.
if ! cmp -s tests/clients/requirements.txt tests/clients/.venv/installed-requirements.txt; then
  rm -rf tests/clients/.venv
  "$PY" -m venv tests/clients/.venv
  tests/clients/.venv/bin/pip install --quiet -r tests/clients/requirements.txt
  cp tests/clients/requirements.txt tests/clients/.venv/installed-requirements.txt
fi
if ! command -v npm >/dev/null; then
  echo "setup: npm not found: install Node.js 18+ and npm (apt-get install nodejs npm) for the TypeScript client check" >&2
elif ! cmp -s tests/clients/package-lock.json tests/clients/node_modules/.installed-package-lock.json; then
  (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/clients/package-lock.json tests/clients/node_modules/.installed-package-lock.json
fi
