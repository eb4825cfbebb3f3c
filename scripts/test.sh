#!/usr/bin/env bash
# The whole test suite (unit + integration against the local Postgres and Redis), then lint.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
