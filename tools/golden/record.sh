#!/usr/bin/env bash
# Golden outputs for behaviour-preserving refactors (issue 15): for fixed keys and models
# (models/aloe-mini and synthesized llama / mistral / qwen2 / qwen3 shapes) it records the sha256
# of the synthesized checkpoints, of the obfuscated safetensors and GGUF bytes, of `forward`
# logits, and of the `eval`, `audit` and `audit-stream` JSON figures (times, dates, machine and
# paths removed, since they change from run to run). Record before a change, compare after it.
#
#   tools/golden/record.sh record  [--bin build/aloepri] [--dir build/golden]   # writes DIR/golden.txt
#   tools/golden/record.sh compare [--bin build/aloepri] [--dir build/golden]   # re-runs, diffs against it
#
# BLAS runs single-threaded here: a multi-threaded GEMM sums in another order, so the obfuscated
# bytes of one binary differ from run to run with the thread count (not a regression).
#
# Each line of golden.txt is "NAME SHA256"; the normalised JSON files stay beside it (DIR/last/)
# so that a difference can be read. Takes a few minutes on 2 cores. Exit 1 on any difference.
set -euo pipefail

mode=${1:-}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/build/aloepri
dir=$root/build/golden
while [[ $# -gt 0 ]]; do
  case $1 in
    --bin) bin=$(realpath "$2"); shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "record.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $mode == record || $mode == compare ]] || { echo "usage: record.sh record|compare [--bin B] [--dir D]" >&2; exit 2; }
[[ -x $bin ]] || { echo "record.sh: $bin is not an executable (build first)" >&2; exit 2; }
corpus=$root/build/corpus
[[ -f $corpus/heldout.bin && -f $corpus/train.bin ]] || { echo "record.sh: $corpus/{heldout,train}.bin missing (tools/corpus)" >&2; exit 2; }

mkdir -p "$dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/aloepri-golden-XXXXXX")
trap 'rm -rf "$work"' EXIT
out=$dir/last
rm -rf "$out" && mkdir -p "$out"
sums=$out/golden.txt
: > "$sums"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1  # same summation order on any machine load

log() { echo "golden: $*" >&2; }
put() { echo "$1 $2" >> "$sums"; }
hash_file() { sha256sum "$1" | cut -d' ' -f1; }
# Every file of a directory, by relative name.
hash_dir() {
  local name=$1 d=$2
  (cd "$d" && find . -type f | LC_ALL=C sort) | while read -r f; do put "$name/${f#./}" "$(hash_file "$d/$f")"; done
}
source "$root/tools/golden/lib.sh"  # norm_json, make_key, seed_hex
put_json() {  # NAME FILE
  norm_json "$2" > "$out/$1.json"
  put "$1" "$(hash_file "$out/$1.json")"
}

ids=1,450,3681,1029,263,1243,29892,322,278,4940,2501,263,931,29889
victim=$work/victim.txt
python3 - "$corpus/heldout.bin" "$victim" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read(2 * 1500)
ids = struct.unpack("<%dH" % (len(b) // 2), b)
open(sys.argv[2], "w").write(",".join(map(str, ids)) + "\n")
PY

# --- models: the shipped one and synthesized shapes (their bytes are goldens too: synth writer)
models=(mini)
ln -s "$root/models/aloe-mini" "$work/mini"
s=1
for arch in llama mistral qwen2 qwen3; do
  log "synth $arch"
  extra=()
  [[ $arch == mistral ]] && extra=(--kv-heads 2)
  [[ $arch == llama ]] && extra=(--rope-scaling llama3)
  "$bin" synth --arch "$arch" --seed $s --out "$work/$arch" "${extra[@]}" 2>/dev/null
  hash_dir "synth-$arch" "$work/$arch"
  models+=("$arch")
  s=$((s + 1))
done
"$bin" synth --arch llama --preset small --dtype bf16 --seed 9 --out "$work/llama-small" 2>/dev/null
hash_dir synth-llama-small "$work/llama-small"
# A mixture-of-experts shape (router, per-expert tensors, stacked GGUF experts), obfuscated exactly,
# and its plain GGUF conversion: the tensor layout touches all three.
if "$bin" synth --arch qwen3moe --seed 7 --out "$work/qwen3moe" 2>/dev/null; then
  hash_dir synth-qwen3moe "$work/qwen3moe"
  "$bin" convert "$work/qwen3moe" --gguf "$work/qwen3moe.gguf" 2>/dev/null
  put convert-qwen3moe "$(hash_file "$work/qwen3moe.gguf")"
  make_key "$work/moe.key" "$(seed_hex 77)"
  "$bin" obfuscate "$work/qwen3moe" --key "$work/moe.key" --out "$work/qwen3moe-exact" --gguf "$work/qwen3moe-exact.gguf" \
    --profile exact 2>/dev/null
  hash_dir obf-qwen3moe-exact "$work/qwen3moe-exact"
  put gguf-qwen3moe-exact "$(hash_file "$work/qwen3moe-exact.gguf")"
  "$bin" forward "$work/qwen3moe-exact" --ids "$ids" --greedy 4 --all-logits --json > "$work/fwd.json"
  put_json forward-qwen3moe-exact "$work/fwd.json"
fi

s=11
for m in "${models[@]}"; do
  for prof in default exact; do  # default: the former `--profile default`
    tag=$m-$prof
    log "obfuscate $tag"
    key=$work/$tag.key
    make_key "$key" "$(seed_hex $s)"
    s=$((s + 1))
    # The noisy setting spelled out (the former `--profile default`, now `--profile noise`), so that
    # the same flags run on binaries from before and after that rename.
    pflag=(--profile paper --alpha-e 0.5 --value-cond 4)
    [[ $prof == exact ]] && pflag=(--profile exact)
    if ! "$bin" obfuscate "$work/$m" --key "$key" --out "$work/$tag" --gguf "$work/$tag.gguf" "${pflag[@]}" \
        2>"$work/err.txt"; then
      # qwen3 (q/k norms) is obfuscated only by newer binaries: say so instead of failing
      grep -q "not supported" "$work/err.txt" || { cat "$work/err.txt" >&2; exit 1; }
      put "obf-$tag" unsupported
      continue
    fi
    hash_dir "obf-$tag" "$work/$tag"
    put "gguf-$tag" "$(hash_file "$work/$tag.gguf")"
    "$bin" forward "$work/$tag" --ids "$ids" --greedy 4 --all-logits --json > "$work/fwd.json"
    put_json "forward-$tag" "$work/fwd.json"
  done
  "$bin" forward "$work/$m" --ids "$ids" --greedy 4 --all-logits --json > "$work/fwd.json"
  put_json "forward-$m-plain" "$work/fwd.json"
done
make_key "$work/q8.key" "$(seed_hex 99)"
"$bin" obfuscate "$work/mini" --key "$work/q8.key" --out "$work/mini-q8" --gguf "$work/mini-q8.gguf" --dtype q8_0 \
  --profile paper --alpha-e 0.5 --value-cond 4 2>/dev/null
put gguf-mini-q8 "$(hash_file "$work/mini-q8.gguf")"
# kappa measured on real activations (the calibrator's own forward pass)
make_key "$work/cal.key" "$(seed_hex 98)"
"$bin" obfuscate "$work/mini" --key "$work/cal.key" --out "$work/mini-cal" --profile paper --alpha-e 0.5 \
  --kappa calibrated --calib-file "$victim" 2>/dev/null
hash_dir obf-mini-calibrated "$work/mini-cal"

# --- eval (reference engine) and audit on aloe-mini, cheap settings
log "eval"
"$bin" eval --plain "$work/mini" --obf "$work/mini-default" --key "$work/mini-default.key" \
  --text-file "$corpus/heldout.txt" --tokens 256 --window 64 --greedy 8 --prompts 2 --json "$work/eval.json" >/dev/null 2>&1
put_json eval-mini-default "$work/eval.json"
"$bin" eval --plain "$work/qwen2" --obf "$work/qwen2-exact" --key "$work/qwen2-exact.key" \
  --text-file "$victim" --tokens 128 --window 32 --greedy 4 --prompts 1 --json "$work/eval2.json" >/dev/null 2>&1
put_json eval-qwen2-exact "$work/eval2.json"

log "audit"
"$bin" audit --plain "$work/mini" --obf "$work/mini-default" --key "$work/mini-default.key" \
  --victim "$corpus/heldout.bin" --victim-tokens 3000 --prior "$corpus/train.bin" --sda-seconds 0 \
  --attacks vma,gate-ia,attn-ia,nn,stream --no-emb-head --vocab-sample 300 --nn-rounds 1 \
  --json "$work/audit.json" --quiet 2>/dev/null
put_json audit-mini-default "$work/audit.json"
"$bin" audit --plain "$work/llama" --obf "$work/llama-default" --key "$work/llama-default.key" \
  --victim "$victim" --attacks vma,nn,oracle --vocab-sample 200 --oracle-rows 256 --oracle-rounds 1 \
  --json "$work/audit2.json" --quiet 2>/dev/null
put_json audit-llama-default "$work/audit2.json"

log "audit-stream"
"$bin" audit-stream --tokenizer "$work/mini" --key "$work/mini-default.key" --victim "$corpus/heldout.bin" \
  --prior train="$corpus/train.bin" --max-prior-tokens 200000 --sizes 1000,3000 --sda-seconds 0 \
  --write-traffic "$work/traffic.jsonl" --json-out "$work/stream.json" >/dev/null 2>&1
put traffic-mini "$(hash_file "$work/traffic.jsonl")"
put_json audit-stream-mini "$work/stream.json"

if [[ $mode == record ]]; then
  cp "$sums" "$dir/golden.txt"
  rm -rf "$dir/recorded" && cp -r "$out" "$dir/recorded"
  log "recorded $(wc -l < "$dir/golden.txt") goldens in $dir/golden.txt"
else
  if diff "$dir/golden.txt" "$sums" > "$out/diff.txt"; then
    log "all $(wc -l < "$sums") goldens identical"
  else
    log "DIFFERENT (see $out/diff.txt and the JSON in $out):"
    cat "$out/diff.txt" >&2
    exit 1
  fi
fi
