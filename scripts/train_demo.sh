#!/usr/bin/env bash
# Train the built-in `demo` model (docs/training.md, "The demo model") with `ilvr train` itself, offline.
#
#   scripts/train_demo.sh [RUN_DIR]        (default: $TMPDIR/ilvr-demo/run)
#
# Needs scikit-learn (the 8x8 digits ship inside its wheel). With SHIP=1 the EMA weights are copied into
# the package (src/ilvr_cli/data/demo/ema.safetensors) and the catalog entry `demo` is rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-${TMPDIR:-/tmp}/ilvr-demo/run}"
DATA_DIR="${DATA_DIR:-${TMPDIR:-/tmp}/ilvr-demo/digits-train}"
PY="${PYTHON:-.venv/bin/python}"
# One thread is fastest on a small shared CPU (OpenMP threads wait on each other when cores are busy).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

[ -d "$DATA_DIR" ] || "$PY" scripts/export_digits.py "$DATA_DIR"
time "$PY" -m ilvr_cli train "$DATA_DIR" "$RUN_DIR" \
  --preset scripts/demo_model.json --seed 0 --max-steps 2500 --batch-size 32 --lr 5e-4 --precision fp32 \
  --ema 0.999 --ema-warmup --grad-clip 1.0 --no-flip --workers 0 \
  --save-every 250 --keep-every 250 --grid-images 16 --sample-steps 50 --log-every 25

if [ "${SHIP:-0}" = 1 ]; then
  "$PY" scripts/ship_demo.py "$RUN_DIR/ema.safetensors"
fi
