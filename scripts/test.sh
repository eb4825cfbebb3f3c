#!/usr/bin/env bash
# The test command: lint, types (eta, api, workers), import cycles, then the test suite (unit + integration
# against the local Postgres and Redis). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python scripts/import_cycles.py
.venv/bin/python -m pytest "$@"
