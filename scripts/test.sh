#!/usr/bin/env bash
# The test command: lint, types (eta, api, workers), the declared import layers (pyproject.toml's
# [tool.importlinter]), then the test suite (unit + integration against the local Postgres and Redis).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
