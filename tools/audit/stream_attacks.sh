#!/usr/bin/env bash
# Token-stream attacks (TFMA, SDA; issue 5) on the aloe-mini vocabulary: what a server recovers
# from the obfuscated ids alone, for two victim sets and priors of three strengths, at several
# traffic sizes. Writes OUT/{heldout,pii}.{txt,json}; docs/RESULTS.md "Token-stream attacks" has the figures.
# The attacks need only tau and the text (no model weights), so retraining aloe-mini changes nothing.
#
# Usage: tools/audit/stream_attacks.sh [OUT=build/audit-stream]
#   env: ALOEPRI (default build/aloepri), SIZES (default 1000,10000,100000,340000),
#        SDA_SECONDS (default 20, per SDA run)
# Needs build/corpus/{train,heldout}.* (tools/corpus/README.md) and the PII e-mails, which it
# builds with `node tools/corpus/pii.mjs build/corpus/pii` when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${ALOEPRI:-build/aloepri}
OUT=${1:-build/audit-stream}
SIZES=${SIZES:-1000,10000,100000,340000}
SDA_SECONDS=${SDA_SECONDS:-20}
C=build/corpus
for f in $C/train.bin $C/train.jsonl $C/heldout.jsonl; do
  [ -f "$f" ] || { echo "stream_attacks.sh: $f missing (see tools/corpus/README.md)" >&2; exit 1; }
done
[ -f $C/pii/victim.jsonl ] || node tools/corpus/pii.mjs $C/pii
mkdir -p "$OUT"
key=$OUT/audit.key  # the victim's secret: makes the traffic and scores, never seen by the attacks
[ -f "$key" ] || "$BIN" keygen --out "$key"
common=(--tokenizer vocab/llama2 --key "$key" --sizes "$SIZES" --shuffle-seed 1 --sda-seconds "$SDA_SECONDS" --force)

# Victim 1: the held-out split of the corpus (SOTU, Moby Dick, KJV, WordNet glosses).
#   unrelated:         e-mails (SpamAssassin ham, the part that is not PII victim)
#   same domain:       the training split with its four sources re-weighted to equal shares
#   same distribution: the training split as it is (same sources and mixture, disjoint documents)
nice -n 10 "$BIN" audit-stream "${common[@]}" --victim $C/heldout.jsonl --victim-name "held-out corpus" \
  --prior "unrelated (e-mails)=$C/pii/ham_prior.jsonl" \
  --balanced-prior "same domain (corpus re-mixed)=$C/train.jsonl" \
  --prior "same distribution (train split)=$C/train.bin" \
  --json-out "$OUT/heldout.json" | tee "$OUT/heldout.txt"

# Victim 2: e-mails with PII (tools/corpus/pii.mjs), PII marked by rules (src/audit/pii.cpp).
#   unrelated:         the aloe-mini training corpus (literature, speeches, glosses)
#   same domain:       spam e-mails
#   same distribution: the other ham e-mails of the same corpus
nice -n 10 "$BIN" audit-stream "${common[@]}" --victim $C/pii/victim.jsonl --victim-name "PII e-mails" \
  --pii-names $C/pii/names.txt \
  --prior "unrelated (corpus)=$C/train.bin" \
  --prior "same domain (spam)=$C/pii/spam_prior.jsonl" \
  --prior "same distribution (ham)=$C/pii/ham_prior.jsonl" \
  --json-out "$OUT/pii.json" | tee "$OUT/pii.txt"
