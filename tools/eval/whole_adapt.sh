#!/usr/bin/env bash
# Private whole-model adaptation (issue 14, defence 1), measured: per point, aloe-adapt trains the
# body AND the embedding/head of aloe-mini from the key's noise draw (--train-vocab); the control
# gets the same fine-tuning (same steps, batches, trainable tensors) without noise. Then every
# point is obfuscated (only the exact transforms touch its embedding/head), scored against the
# original model and every model attack by tools/eval/frontier_points.sh, and scored against the
# control with `aloepri eval`.
# usage: tools/eval/whole_adapt.sh OUT_DIR train|score "name alpha_e alpha_h rule" ...
#   train: OUT/ckpt_<name> (a spec "ctrl 0 0 global" is the control); logs OUT/adapt_<name>.log
#   score: OUT/frontier/{eval,audit}/<name>.json, OUT/vs_ctrl_<name>.json
# env: ADAPT, EXE, MODEL, DATA (build/corpus), KEY (default OUT/adapt.key), STEPS (200), BATCH (4),
#      SEQ (256), LR (5e-4), VOCAB_LR (= LR), THREADS (1), DEVICE (cpu), TEXT (held-out ids),
#      TOKENS (eval, 1024), ATTACKS (frontier_points.sh default)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT=${1:?usage: whole_adapt.sh OUT_DIR train|score "name alpha_e alpha_h rule" ...}; PHASE=${2:?}; shift 2
EXE=${EXE:-$ROOT/build/aloepri}; ADAPT=${ADAPT:-$ROOT/build/tools/train/aloe-adapt}
MODEL=${MODEL:-$ROOT/models/aloe-mini}; DATA=${DATA:-$ROOT/build/corpus}
TEXT=${TEXT:-$ROOT/build/corpus/heldout.bin}; TOKENS=${TOKENS:-1024}
STEPS=${STEPS:-200} BATCH=${BATCH:-4} SEQ=${SEQ:-256} LR=${LR:-5e-4} VOCAB_LR=${VOCAB_LR:-$LR}
THREADS=${THREADS:-1} DEVICE=${DEVICE:-cpu}
mkdir -p "$OUT"
KEY=${KEY:-$OUT/adapt.key}
[ -f "$KEY" ] || "$EXE" -q keygen --out "$KEY"
for spec in "$@"; do
  set -- $spec; name=$1 ae=$2 ah=$3 rule=$4
  ck="$OUT/ckpt_$name"
  case $PHASE in
  train)
    [ -d "$ck" ] && { echo "skip $name (exists)"; continue; }
    OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$ADAPT" --model "$MODEL" --key "$KEY" --data "$DATA" \
      --alpha-e "$ae" --alpha-h "$ah" --noise-scale "$rule" --train-vocab --lr "$LR" --vocab-lr "$VOCAB_LR" \
      --steps "$STEPS" --minutes 0 --batch "$BATCH" --seq "$SEQ" --threads "$THREADS" --device "$DEVICE" \
      --out "$ck" > "$OUT/adapt_$name.log" 2>&1
    tail -2 "$OUT/adapt_$name.log" ;;
  score)
    [ "$name" = ctrl ] && continue
    SOURCE="$ck" KEY="$KEY" VICTIM="$TEXT" "$ROOT/tools/eval/frontier_points.sh" "$OUT/frontier" "$name $ae $ah $rule"
    "$EXE" -q obfuscate "$ck" --key "$KEY" --out "$OUT/obf_$name" --force --profile noise --alpha-e "$ae" \
      --alpha-h "$ah" --noise-scale "$rule" >/dev/null
    "$EXE" -q eval --plain "$OUT/ckpt_ctrl" --obf "$OUT/obf_$name" --obf-source "$ck" --key "$KEY" --text-file "$TEXT" \
      --tokens "$TOKENS" --greedy 16 --prompts 2 --no-attribution --json "$OUT/vs_ctrl_$name.json" --force \
      --tag name="$name" base=ctrl | head -2 | tail -1
    rm -rf "$OUT/obf_$name" ;;
  *) echo "phase must be train or score" >&2; exit 2 ;;
  esac
done
