#!/usr/bin/env bash
# The main job end to end on a fresh machine: install, then `eta demo` (tiny models built on first use, the
# database migrated, an API and a worker started, a batch of sample images submitted and followed to the end,
# results and flagged audit records printed, everything stopped). Embedded by default: no servers, no GPU.
# Set DATABASE_URL and REDIS_URL to run it on Postgres and Redis instead. Extra arguments go to `eta demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eta demo "$@"
