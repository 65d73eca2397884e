#!/usr/bin/env bash
# Accuracy sweeps of issue 6 on the reference forward: one privacy parameter at a time, each point
# obfuscated with one fixed key (same noise realization everywhere) and scored by `aloepri eval`
# on a few thousand held-out tokens; then `aloepri eval-frontier` joins the points with the
# privacy audit's attack figures (if given) and writes sweep.json + sweep.html.
#
# usage: tools/eval/sweep.sh [--exe build/aloepri] [--model models/aloe-mini] [--out build-eval/sweep]
#                            [--tokens 2048] [--text build/corpus/heldout.bin] [--attacks AUDIT.json]
#                            [--only GROUP[,GROUP]] [--keep]
# Groups: alpha_e alpha_h lambda h beta keymat kappa noise_scale profiles. A point whose JSON
# already exists is skipped (rerun after a model change with a fresh --out, or delete points/).
# Machine note: run niced on a shared box; each point is ~10-20 s for aloe-mini.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
EXE="$ROOT/build/aloepri"; MODEL="$ROOT/models/aloe-mini"; OUT="$ROOT/build-eval/sweep"
TOKENS=2048; TEXT="$ROOT/build/corpus/heldout.bin"; ATTACKS=""; ONLY=""; KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --exe) EXE="$2"; shift 2;; --model) MODEL="$2"; shift 2;; --out) OUT="$2"; shift 2;;
    --tokens) TOKENS="$2"; shift 2;; --text) TEXT="$2"; shift 2;; --attacks) ATTACKS="$2"; shift 2;;
    --only) ONLY="$2"; shift 2;; --keep) KEEP=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
mkdir -p "$OUT/points"
KEY="$OUT/sweep.key"
[ -f "$KEY" ] || "$EXE" -q keygen --out "$KEY"
OBF="$OUT/obf"

want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# point NAME GROUP X SERIES -- obfuscate flags...
point() {
  local name="$1" group="$2" x="$3" series="$4"; shift 5
  local js="$OUT/points/$name.json"
  if [ -f "$js" ]; then echo "skip $name (exists)"; return; fi
  echo "== $name: $*"
  "$EXE" -q obfuscate "$MODEL" --key "$KEY" --out "$OBF" --force "$@" >/dev/null 2>"$OUT/obf.log" \
    || { cat "$OUT/obf.log" >&2; exit 1; }
  "$EXE" -q eval --plain "$MODEL" --obf "$OBF" --key "$KEY" --text-file "$TEXT" --tokens "$TOKENS" \
    --greedy 16 --prompts 2 --no-attribution --json "$js" --force \
    --tag sweep="$group" x="$x" series="$series" name="$name" | head -2 | tail -1
}

# Report defaults: lambda .3, h 128, alpha_e 1, alpha_h .2, beta 8, gamma 1000, paper keymat,
# gaussian kappa, global noise. Structural sweeps (lambda, h, beta, keymat, kappa) run with the
# noise off so their own cost is visible; noise sweeps keep the structure at the defaults.
if want alpha_e; then
  for a in 0 0.25 0.5 0.75 1 1.25 1.5; do point "alpha_e_$a" "alpha_e (defaults otherwise)" alpha_e bf16 -- --alpha-e "$a"; done
fi
if want noise_scale; then
  for a in 0.25 0.5 0.75 1; do
    for ns in global per-row; do point "noise_${ns}_$a" "noise scale rule" alpha_e "$ns" -- --alpha-e "$a" --noise-scale "$ns"; done
  done
fi
if want alpha_h; then
  for a in 0 0.1 0.2 0.3 0.4 0.5; do point "alpha_h_$a" "alpha_h (alpha_e 0.5, defaults otherwise)" alpha_h bf16 -- --alpha-e 0.5 --alpha-h "$a"; done
fi
if want lambda; then
  for dt in f32 bf16; do
    for l in 0 0.1 0.3 1 3; do point "lambda_${l}_$dt" "lambda (no noise)" lambda "$dt" -- --lambda "$l" --alpha-e 0 --alpha-h 0 --dtype "$dt"; done
  done
fi
if want h; then
  for h in 0 32 128 256; do point "h_$h" "h (no noise)" expansion bf16 -- --expansion "$h" --alpha-e 0 --alpha-h 0; done
fi
if want beta; then
  for b in 1 4 8 16; do point "beta_$b" "beta (no noise)" beta bf16 -- --beta "$b" --alpha-e 0 --alpha-h 0; done
fi
if want keymat; then
  for k in paper exact-norm; do point "keymat_$k" "keymat (no noise)" lambda "$k" -- --keymat "$k" --alpha-e 0 --alpha-h 0; done
  for k in paper exact-norm; do point "keymat_${k}_noisy" "keymat (alpha_e 0.5)" lambda "$k" -- --keymat "$k" --alpha-e 0.5; done
fi
if want kappa; then
  CAL="$OUT/calib.txt"
  [ -f "$CAL" ] || head -c 4000 "$ROOT/build/corpus/heldout.txt" > "$CAL"
  point "kappa_gaussian" "kappa (no noise)" lambda gaussian -- --alpha-e 0 --alpha-h 0
  point "kappa_calibrated" "kappa (no noise)" lambda calibrated -- --alpha-e 0 --alpha-h 0 --kappa calibrated --calib-text "$CAL"
fi
if want profiles; then
  for p in paper noise exact; do
    "$EXE" obfuscate --help 2>/dev/null | grep -q -- --profile || break
    point "profile_$p" "profiles" alpha_e "$p" -- --profile "$p"
  done
fi
rm -rf "$OBF"
[ "$KEEP" = 1 ] || true
FA=()
[ -n "$ATTACKS" ] && FA=(--attacks "$ATTACKS")
"$EXE" eval-frontier "$OUT/points" "${FA[@]}" --json "$OUT/sweep.json" --html "$OUT/sweep.html" --force
