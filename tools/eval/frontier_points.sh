#!/usr/bin/env bash
# The privacy/accuracy frontier under every model attack (issues 13/14): per point, obfuscate
# aloe-mini (the noise profile's structure with the given noise), score its accuracy
# (`aloepri eval`, reference engine) and run the audit's model attacks on held-out victim text
# (VMA without the n x n pair, Gate-IA, Attn-IA, NN, Oracle); then join them with
# `aloepri eval-frontier` (worst attack per point, Pareto front, JSON + HTML).
# usage: tools/eval/frontier_points.sh OUT_DIR "name alpha_e alpha_h rule [extra obfuscate flags]" ...
# env: EXE (aloepri), MODEL, VICTIM (uint16 ids), VICTIM_TOKENS (20000), TOKENS (eval, 1024),
#      ATTACKS (vma,gate-ia,attn-ia,nn,oracle,oracle-nn), SOURCE (an adapted checkpoint to obfuscate instead
#      of MODEL; eval then gets --obf-source), KEY (default OUT_DIR/frontier.key), BUDGET (the
#      audit's --budget-seconds, default 900: on a contended machine the oracle's later rounds
#      and oracle-nn need more; a skipped or cut attack is listed in the audit JSON)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT=${1:?usage: frontier_points.sh OUT_DIR "name alpha_e alpha_h rule" ...}; shift
EXE=${EXE:-$ROOT/build/aloepri}; MODEL=${MODEL:-$ROOT/models/aloe-mini}
VICTIM=${VICTIM:-$ROOT/build/corpus/heldout.bin}; VT=${VICTIM_TOKENS:-20000}; TOKENS=${TOKENS:-1024}
ATTACKS=${ATTACKS:-vma,gate-ia,attn-ia,nn,oracle,oracle-nn}; SOURCE=${SOURCE:-}; BUDGET=${BUDGET:-900}
mkdir -p "$OUT/eval" "$OUT/audit"
KEY=${KEY:-$OUT/frontier.key}
[ -f "$KEY" ] || "$EXE" -q keygen --out "$KEY"
for spec in "$@"; do
  set -- $spec; name=$1; ae=$2; ah=$3; rule=$4; shift 4
  ev="$OUT/eval/$name.json"; au="$OUT/audit/$name.json"
  if [ -f "$ev" ] && [ -f "$au" ]; then echo "skip $name (exists)"; continue; fi
  echo "== $name: alpha_e $ae alpha_h $ah $rule $*"
  src="$MODEL"; srcflag=()
  [ -n "$SOURCE" ] && { src="$SOURCE"; srcflag=(--obf-source "$SOURCE"); }
  "$EXE" -q obfuscate "$src" --key "$KEY" --out "$OUT/obf" --force --profile noise --alpha-e "$ae" \
    --alpha-h "$ah" --noise-scale "$rule" "$@" >/dev/null
  [ -f "$ev" ] || "$EXE" -q eval --plain "$MODEL" --obf "$OUT/obf" "${srcflag[@]}" --key "$KEY" \
    --text-file "$VICTIM" --tokens "$TOKENS" --greedy 16 --prompts 2 --no-attribution --json "$ev" --force \
    --tag name="$name" | head -2 | tail -1
  [ -f "$au" ] || "$EXE" -q audit --plain "$MODEL" --obf "$OUT/obf" --key "$KEY" --victim "$VICTIM" \
    --victim-tokens "$VT" --attacks "$ATTACKS" --no-emb-head --budget-seconds "$BUDGET" --json "$au" --force
done
rm -rf "$OUT/obf"
"$EXE" -q eval-frontier "$OUT/eval" --attacks "$OUT/audit" --json "$OUT/frontier.json" --html "$OUT/frontier.html" --force
