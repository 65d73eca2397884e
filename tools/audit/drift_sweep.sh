#!/usr/bin/env bash
# NN against drifted served weights (issue 13): for each drift eps and kind, drift the public model
# (`aloepri audit-drift`), obfuscate the drifted copy at a profile, and attack it with the
# UNdrifted public model, with the robust and the classic NN alignment. One line per run on stdout
# (TSV) and every audit JSON under OUT.
#
#   tools/audit/drift_sweep.sh --victim IDS [--model DIR] [--out DIR] [--exe PATH] [--tokens N]
#       [--profiles noise,exact] [--kinds gaussian,lowrank] [--eps 0,0.01,...] [--vocab]
#
# IDS: victim plaintext ids (.bin uint16 or comma-separated text, as `aloepri audit --victim`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODEL="$ROOT/models/aloe-mini"
OUT="$ROOT/build/drift-sweep"
EXE="$ROOT/build/aloepri"
VICTIM=""
TOKENS=20000
PROFILES="noise,exact"
KINDS="gaussian,lowrank"
EPS="0,0.01,0.02,0.05,0.1,0.2,0.5"
VOCAB=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --exe) EXE="$2"; shift 2 ;;
    --victim) VICTIM="$2"; shift 2 ;;
    --tokens) TOKENS="$2"; shift 2 ;;
    --profiles) PROFILES="$2"; shift 2 ;;
    --kinds) KINDS="$2"; shift 2 ;;
    --eps) EPS="$2"; shift 2 ;;
    --vocab) VOCAB="--vocab"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$VICTIM" ] || { echo "--victim IDS is required" >&2; exit 2; }
mkdir -p "$OUT"
[ -f "$OUT/key" ] || "$EXE" keygen --out "$OUT/key"
printf 'profile\tkind\teps\tvocab\trealised\talignment\tttrsr\tvocab_recovery\temb_alone\thead_alone\tbody_drift\tseconds\n'
for profile in ${PROFILES//,/ }; do
  for kind in ${KINDS//,/ }; do
    for eps in ${EPS//,/ }; do
      [ "$kind" != gaussian ] && [ "$eps" = 0 ] && continue  # eps 0 is the same model for every kind
      name="$profile.$kind.$eps${VOCAB:+.vocab}"
      rm -rf "$OUT/$name.drifted" "$OUT/$name.obf"
      realised=$("$EXE" audit-drift "$MODEL" --out "$OUT/$name.drifted" --eps "$eps" --kind "$kind" $VOCAB 2>&1 |
                 sed -n 's/.*realised relative drift \([0-9.e+-]*\).*/\1/p')
      "$EXE" obfuscate "$OUT/$name.drifted" --key "$OUT/key" --out "$OUT/$name.obf" --profile "$profile" >/dev/null 2>&1
      for align in robust classic; do
        flag=""; [ "$align" = classic ] && flag="--nn-classic"
        "$EXE" audit --plain "$MODEL" --obf "$OUT/$name.obf" --key "$OUT/key" --victim "$VICTIM" \
          --victim-tokens "$TOKENS" --attacks nn $flag --quiet --force --json "$OUT/$name.$align.json" >/dev/null 2>&1
        jq -r --arg p "$profile" --arg k "$kind" --arg e "$eps" --arg v "${VOCAB:+yes}" --arg r "$realised" --arg a "$align" \
          '.results[0] | [$p, $k, $e, ($v|if .=="" then "no" else . end), $r, $a, .ttrsr, .vocab_recovery,
            .details.parts.embedding.ttrsr, .details.parts.head.ttrsr,
            (.details.tensor_drift.body // "-"), .seconds] | @tsv' "$OUT/$name.$align.json"
      done
      rm -rf "$OUT/$name.drifted" "$OUT/$name.obf"
    done
  done
done
