#!/usr/bin/env bash
# Rerunnable measurement of the learned attacks (ISA, IMA) on a model (default models/aloe-mini)
# for docs/RESULTS.md "Learned attacks". Needs a build with -DALOEPRI_WITH_TORCH=ON and the corpus
# (build/corpus/{heldout,train}.bin). Each run prints its summary line and writes its
# AttackResult JSON to $OUT/<name>.json.
#   BUILD=build-learned tools/attacks/measure.sh [isa|ima|all|ima-extra]
# Every victim is obfuscated here with --victim-seed 1 (the key never reaches the attack).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
MODEL=${MODEL:-models/aloe-mini}
OUT=${OUT:-$BUILD/attack-results}
EXE=$BUILD/tools/attacks/aloe-attack
WHAT=${1:-all}
[ -x "$EXE" ] || { echo "measure.sh: $EXE not built (cmake -DALOEPRI_WITH_TORCH=ON)" >&2; exit 2; }
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=1
echo "# $(date -u +%FT%TZ) $(uname -n) $MODEL $(sha256sum "$MODEL/model.safetensors" | cut -c1-12)"

run() {  # name, subcommand, flags...
  local name=$1; shift
  printf '%-28s ' "$name"
  "$EXE" "$@" --plain "$MODEL" --quiet --work "$BUILD/attack-work" --out "$OUT/$name.json" --force
}

if [ "$WHAT" = isa ] || [ "$WHAT" = all ]; then
  # 8 victim windows x 64 tokens; 50 L-BFGS steps (of <= 20 iterations).
  run isa-hidden-plain-none      isa --target hidden --layer 0 --no-obf --align none
  run isa-hidden-plain-orth      isa --target hidden --layer 0 --no-obf --align orthogonal
  run isa-hidden-plain-linear    isa --target hidden --layer 0 --no-obf --align linear
  run isa-hidden-exact-orth      isa --target hidden --layer 0 --exact --align orthogonal
  run isa-hidden-exact-linear    isa --target hidden --layer 0 --exact --align linear
  run isa-hidden-default-orth    isa --target hidden --layer 0 --align orthogonal
  run isa-hidden-default-linear  isa --target hidden --layer 0 --align linear
  run isa-attn-plain             isa --target attn --layer 0 --no-obf
  run isa-attn-exact             isa --target attn --layer 0 --exact
  run isa-attn-default           isa --target attn --layer 0
fi
if [ "$WHAT" = ima ] || [ "$WHAT" = all ]; then
  # 256 public windows x 64 tokens per attacker key, 300 steps of a 2-layer transformer inverter.
  run ima-emb-default-samekey    ima --layer -1 --same-key --steps 300
  run ima-emb-default            ima --layer -1 --attacker-keys 2 --steps 300
fi
if [ "$WHAT" = ima-extra ]; then
  run ima-emb-exact              ima --layer -1 --attacker-keys 2 --steps 300 --exact
  run ima-l0-default             ima --layer 0 --attacker-keys 2 --steps 300
fi
