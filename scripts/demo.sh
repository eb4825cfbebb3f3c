#!/usr/bin/env bash
# The main job end to end on a fresh machine: install, build the tiny models on first use, run ETA on a
# sample image twice (paper thresholds, then thresholds that force alignment). No servers, no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SAMPLE=${ETA_SAMPLES_DIR:-../shared/samples}/waterview.jpg
echo "== ETA with the paper's thresholds"
.venv/bin/eta run --image "$SAMPLE" --prompt "What is in this picture?" --max-new-tokens 64 "$@"
echo
echo "== ETA with thresholds that force alignment (tau_pre=-1, tau_post=1e9)"
.venv/bin/eta run --image "$SAMPLE" --prompt "What is in this picture?" --max-new-tokens 64 \
  --tau-pre -1 --tau-post 1e9 "$@"
