#!/usr/bin/env bash
# Noise-aware adaptation, evaluation side (docs/RESULTS.md "Accuracy audit"): for each body trained by
# tools/eval/adapt_gpu_runs.sh (or by aloe-adapt on the CPU), assemble the adapted checkpoint
# (aloe-adapt --body-in: also checks that the noise it was trained with is the obfuscator's),
# obfuscate it with the key it was adapted for, and score it against the ORIGINAL plaintext
# model and against the control (the same fine-tuning without noise).
# usage: tools/eval/adapted_eval.sh DIR KEY "name alpha_e alpha_h rule" ...   (DIR holds body_<name>.safetensors;
#        a spec named ctrl with 0 0 is the control and must come first)
# env: EXE (aloepri), ADAPT (aloe-adapt), MODEL, TEXT, TOKENS, STRUCT (structural obfuscate flags)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR=${1:?}; KEY=${2:?}; shift 2
EXE=${EXE:-$ROOT/build-eval/aloepri}; ADAPT=${ADAPT:-$ROOT/build-eval/tools/train/aloe-adapt}
MODEL=${MODEL:-$ROOT/models/aloe-mini}; TEXT=${TEXT:-$ROOT/build/corpus/heldout.bin}; TOKENS=${TOKENS:-2048}
STRUCT=${STRUCT:---profile paper}
for spec in "$@"; do
  set -- $spec; name=$1 ae=$2 ah=$3 rule=$4
  ck="$DIR/ckpt_$name"
  [ -d "$ck" ] || "$ADAPT" --model "$MODEL" --key "$KEY" --alpha-e "$ae" --alpha-h "$ah" --noise-scale "$rule" \
      --steps 0 --minutes 0 --body-in "$DIR/body_$name.safetensors" --out "$ck" 2>&1 | tail -1
  obf="$DIR/obf_$name"
  "$EXE" -q obfuscate "$ck" --key "$KEY" --out "$obf" --force $STRUCT --alpha-e "$ae" --alpha-h "$ah" --noise-scale "$rule" 2>/dev/null
  for base in orig ctrl; do
    plain="$MODEL"; [ $base = ctrl ] && plain="$DIR/ckpt_ctrl"
    [ $base = ctrl ] && [ $name = ctrl ] && continue
    "$EXE" -q eval --plain "$plain" --obf "$obf" --obf-source "$ck" --key "$KEY" --text-file "$TEXT" --tokens "$TOKENS" \
      --greedy 16 --prompts 2 --no-attribution --json "$DIR/eval_${name}_vs_$base.json" --force \
      --tag sweep="adapted ($base)" x=alpha_e series="$rule" name="adapted_$name" base="$base" | sed -n 2p | sed "s/^/$name vs $base: /"
  done
  rm -rf "$obf"
done
