#!/usr/bin/env bash
# Attack figures for the accuracy frontier (docs/RESULTS.md "Accuracy audit"): obfuscates aloe-mini at each
# given noise setting (structure: the report's lambda .3, h 128, beta 8) and runs the privacy
# audit's weight attacks (VMA without the n x n embedding x head pair, Gate-IA, Attn-IA, NN) on
# held-out victim text. The JSONs feed `aloepri eval-frontier --attacks DIR`.
# usage: tools/eval/audit_points.sh OUT_DIR "name alpha_e alpha_h rule" ...
# env: EXE (aloepri), MODEL, VICTIM (uint16 ids), VICTIM_TOKENS (default 20000)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT=${1:?}; shift
EXE=${EXE:-$ROOT/build-eval/aloepri}; MODEL=${MODEL:-$ROOT/models/aloe-mini}
VICTIM=${VICTIM:-$ROOT/build/corpus/heldout.bin}; VT=${VICTIM_TOKENS:-20000}
mkdir -p "$OUT"
KEY="$OUT/audit.key"
[ -f "$KEY" ] || "$EXE" -q keygen --out "$KEY"
for spec in "$@"; do
  set -- $spec; name=$1
  js="$OUT/audit_$name.json"
  [ -f "$js" ] && { echo "skip $name"; continue; }
  "$EXE" -q obfuscate "$MODEL" --key "$KEY" --out "$OUT/obf" --force --profile paper --alpha-e "$2" --alpha-h "$3" \
    --noise-scale "$4" 2>/dev/null
  "$EXE" -q audit --plain "$MODEL" --obf "$OUT/obf" --key "$KEY" --victim "$VICTIM" --victim-tokens "$VT" \
    --attacks vma,gate-ia,attn-ia,nn --no-emb-head --json "$js" --force --quiet
  echo "$name: $(python3 -c "import json;j=json.load(open('$js'));print(', '.join('%s %.4f'%(a['attack'],a['ttrsr']) for a in j['results']))" 2>/dev/null || echo done)"
done
rm -rf "$OUT/obf"
