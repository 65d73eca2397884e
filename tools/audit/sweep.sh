#!/usr/bin/env bash
# Privacy-audit sweep on a model (default models/aloe-mini): obfuscates it at each setting with
# one fresh key, runs `aloepri audit` (weight attacks) on held-out text, and joins the reports
# (params -> attack figures) into sweep.json / sweep.md / sweep.html with `aloepri audit-sweep`.
#
#   tools/audit/sweep.sh [--model DIR] [--out DIR] [--exe PATH] [--victim FILE] [--tokens N]
#                        [--only NAME,NAME] [--attacks vma,gate-ia,attn-ia,nn]
# With --attacks, each setting's report is NAME.<attacks>.json; audit-sweep joins the reports of
# equal parameters into one row, so one attack can be rerun alone.
#
# Settings: the report's Table 1 (defaults), a Table 3-style ladder (permutation only, noise only,
# + key matrices, + head/block permutation = defaults) and Figure 3 (alpha_e and alpha_h sweeps).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODEL="$ROOT/models/aloe-mini"
OUT="$ROOT/build/audit-sweep"
EXE="$ROOT/build/aloepri"
VICTIM="$ROOT/build/corpus/heldout.bin"
TOKENS=20000
ONLY=""
ATTACKS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --exe) EXE="$2"; shift 2 ;;
    --victim) VICTIM="$2"; shift 2 ;;
    --tokens) TOKENS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --attacks) ATTACKS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
[ -f "$OUT/key" ] || "$EXE" keygen --out "$OUT/key"

# name | obfuscate flags | extra audit flags
SETTINGS=(
  "default||"
  "perm-only|--exact|--no-emb-head"
  "noise-only|--lambda 0 --expansion 0 --beta 1|--no-emb-head"
  "noise+keymat|--beta 1|--no-emb-head"
  "ae0.00|--alpha-e 0|--no-emb-head --no-parts"
  "ae0.25|--alpha-e 0.25|--no-emb-head --no-parts"
  "ae0.50|--alpha-e 0.5|--no-emb-head --no-parts"
  "ae0.75|--alpha-e 0.75|--no-emb-head --no-parts"
  "ae1.50|--alpha-e 1.5|--no-emb-head --no-parts"
  "ae2.00|--alpha-e 2|--no-emb-head --no-parts"
  "ah0.00|--alpha-h 0|--no-emb-head --no-parts"
  "ah0.10|--alpha-h 0.1|--no-emb-head --no-parts"
  "ah0.50|--alpha-h 0.5|--no-emb-head --no-parts"
  "ah1.00|--alpha-h 1|--no-emb-head --no-parts"
  "ah2.00|--alpha-h 2|--no-emb-head --no-parts"
)
SUFFIX=""
[ -n "$ATTACKS" ] && SUFFIX=".${ATTACKS//,/-}"
for s in "${SETTINGS[@]}"; do
  IFS='|' read -r name oflags aflags <<<"$s"
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    continue
  fi
  [ -n "$ATTACKS" ] && aflags="$aflags --attacks $ATTACKS"
  echo "== $name: obfuscate $oflags" >&2
  # shellcheck disable=SC2086
  "$EXE" obfuscate "$MODEL" --key "$OUT/key" --out "$OUT/obf-$name" --force $oflags 2>&1 | grep -v '^$' | tail -1 >&2
  # NN at alpha_h 0 / alpha_e 0 would whiten by zero: the attacker knows the parameters anyway.
  # shellcheck disable=SC2086
  "$EXE" audit --plain "$MODEL" --obf "$OUT/obf-$name" --key "$OUT/key" --victim "$VICTIM" \
    --victim-tokens "$TOKENS" --budget-seconds 1200 --json "$OUT/$name$SUFFIX.json" --html "$OUT/$name$SUFFIX.html" --force $aflags
  rm -rf "$OUT/obf-$name"
done
REPORTS=()
for f in "$OUT"/*.json; do
  [ "$(basename "$f")" = sweep.json ] || REPORTS+=("$f")
done
"$EXE" audit-sweep "${REPORTS[@]}" --json "$OUT/sweep.json" --md "$OUT/sweep.md" --html "$OUT/sweep.html" --force
echo "wrote $OUT/sweep.json, sweep.md, sweep.html" >&2
