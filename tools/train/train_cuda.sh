#!/usr/bin/env bash
# The GPU run that produced the shipped aloe-mini (see models/aloe-mini/MODEL_CARD.md): build
# aloe-train for CUDA, train the recipe, evaluate on the full held-out split, export.
# Needs build/corpus/{train,heldout}.bin (node tools/corpus/build.mjs && tokenize.mjs).
# usage: tools/train/train_cuda.sh WORK_DIR STEPS BATCH [extra train flags]
set -euo pipefail
work=${1:?WORK_DIR}; steps=${2:?STEPS}; batch=${3:?BATCH}; shift 3
bin=${ALOE_TRAIN_BIN:-$work/bin/aloe-train}
[ -x "$bin" ] || tools/train/cuda_build.sh "$work/bin" >&2
mkdir -p "$work"
"$bin" --device cuda train --data build/corpus --run-dir "$work/run" --steps "$steps" --batch "$batch" \
  --seq 256 --lr 2e-3 --warmup 100 --min-lr-frac 0.1 --seed 1 --eval-every 500 --eval-windows 64 \
  --ckpt-every 1000000 --log-every 250 "$@" 2>&1 | tee "$work/train.log"
"$bin" --device cuda export --checkpoint "$work/run/last.pt" --out "$work/model" --tokenizer models/aloe-mini
"$bin" --device cuda eval --model "$work/model" --data build/corpus --json "$work/eval.json" 2>&1 | tee "$work/eval.log"
