#!/usr/bin/env bash
# The noise-aware adaptation runs of docs/RESULTS.md "Accuracy audit" on a lent GPU: builds aloe-adapt for
# CUDA (tools/eval/adapt_cuda.sh) and runs one adaptation per spec in parallel, each writing
# only the trained body to OUT/body_<name>.safetensors (assemble on the CPU build with
# `aloe-adapt --body-in F --steps 0 --minutes 0 --out DIR ...`, which also checks the noise).
# usage: OUT=dir KEY=key tools/eval/adapt_gpu_runs.sh "name alpha_e alpha_h rule" ...
# EXTRA: more aloe-adapt flags, e.g. EXTRA="--train-vocab --vocab-lr 2e-3" (whole-model adaptation,
# issue 14: the body file then also holds the trained embedding/head).
set -uo pipefail
: "${OUT:?}" "${KEY:?}"
STEPS=${STEPS:-1500} MIN=${MIN:-2} LR=${LR:-5e-4} BATCH=${BATCH:-16}
chmod 600 "$KEY"
DEPS=.devdeps bash tools/eval/adapt_cuda.sh /tmp/ab > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
for spec in "$@"; do
  set -- $spec
  /tmp/ab/aloe-adapt --model models/aloe-mini --key "$KEY" --data build/corpus --alpha-e "$2" --alpha-h "$3" \
    --noise-scale "$4" --device cuda --steps "$STEPS" --minutes "$MIN" --batch "$BATCH" --seq 256 --lr "$LR" \
    --threads 2 ${EXTRA:-} --body-out "$OUT/body_$1.safetensors" > "$OUT/$1.log" 2>&1 &
done
wait
for f in "$OUT"/*.log; do echo "== $f"; tail -2 "$f"; done
nvidia-smi --query-gpu=name --format=csv,noheader
