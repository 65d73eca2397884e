#!/usr/bin/env bash
# Golden outputs of the libtorch tools (issue 15: one libtorch Llama module for aloe-train,
# aloe-adapt and aloe-attack). Short, fixed-seed, single-threaded CPU runs of each consumer:
#   train-*    aloe-train: the loss/eval lines, sha256 of the exported tensor bytes (the
#              safetensors payload; its header metadata carries wall times), eval and verify.
#   adapt-*    aloe-adapt on models/aloe-mini (body only, --train-vocab) and on a synthesized
#              qwen2 (q/k/v biases, GQA, tied): logged losses, sha256 of model.safetensors, the
#              aloepri_adapted record (final loss, drift) without its times.
#   attack-*   aloe-attack isa (hidden, attn on the exact transform) and ima (same key): the
#              AttackResult JSON without its times.
# Record before a change, compare after it:
#   tools/golden/torch_record.sh record  [--build build] [--dir /tmp/torch-golden-before]
#   tools/golden/torch_record.sh compare [--build build] [--dir /tmp/torch-golden-before]
# compare reruns into DIR/last/, lists the files that differ and, per differing file, the
# largest absolute difference of the numbers in it (same position, same line). Exit 1 on any
# difference. Takes about two minutes on 2 cores.
set -euo pipefail

mode=${1:-}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$root/build
dir=/tmp/torch-golden-before
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) build=$(realpath "$2"); shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "torch_record.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $mode == record || $mode == compare ]] || { echo "usage: torch_record.sh record|compare [--build B] [--dir D]" >&2; exit 2; }
cd "$root"
dir=$(realpath -m "$dir")
train=$build/tools/train/aloe-train
adapt=$build/tools/train/aloe-adapt
attack=$build/tools/attacks/aloe-attack
# synth only writes the qwen2 test model; any build's `aloepri` writes the same bytes.
aloepri=${ALOEPRI:-$build/aloepri}
for x in "$train" "$adapt" "$attack" "$aloepri"; do
  [[ -x $x ]] || { echo "torch_record.sh: $x is not built (-DALOEPRI_WITH_TORCH=ON; ALOEPRI= names another aloepri)" >&2; exit 2; }
done
corpus=$root/build/corpus
[[ -f $corpus/heldout.bin && -f $corpus/train.bin ]] || { echo "torch_record.sh: $corpus/{heldout,train}.bin missing" >&2; exit 2; }

out=$dir
[[ $mode == compare ]] && out=$dir/last
[[ $mode == compare && ! -d $dir ]] && { echo "torch_record.sh: no recording in $dir" >&2; exit 2; }
rm -rf "$out" && mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/aloepri-torch-golden-XXXXXX")
trap 'rm -rf "$work"' EXIT
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
log() { echo "torch-golden: $*" >&2; }

# sha256 of a safetensors file's tensor bytes (everything after the 8-byte length and header).
payload_sha() {
  local n
  n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  tail -c +$((n + 9)) "$1" | sha256sum | cut -d' ' -f1
}
source "$root/tools/golden/lib.sh"  # norm_json, make_key, seed_hex
volatile="seconds|secs|time|elapsed|threads"

# ---- aloe-train: a tiny GQA model, tied and untied
tiny=(--hidden 64 --layers 2 --heads 4 --kv-heads 2 --head-dim 16 --ffn 128 --batch 2 --seq 32 --warmup 2
      --log-every 1 --eval-every 2 --eval-windows 2 --seed 3 --data "$corpus")
for v in tied untied; do
  log "aloe-train $v"
  flags=(--steps 4)
  [[ $v == untied ]] && flags=(--steps 2 --untied)
  "$train" --threads 1 train --run-dir "$work/run-$v" "${tiny[@]}" "${flags[@]}" > "$work/train-$v.log"
  grep -E '^(step|eval step)' "$work/train-$v.log" | sed -E 's/ tok\/s .*//' > "$out/train-$v.loss.txt"
  "$train" --threads 1 export --checkpoint "$work/run-$v/last.pt" --out "$work/export-$v" --tokenizer "$root/vocab/llama2" >/dev/null
  payload_sha "$work/export-$v/model.safetensors" > "$out/train-$v.tensors.sha256"
  "$train" --threads 1 eval --model "$work/export-$v" --data "$corpus" --seq 32 --windows 4 --no-baselines \
    --json "$work/eval-$v.json" >/dev/null
  norm_json "$work/eval-$v.json" "$volatile" > "$out/train-$v.eval.json"
  "$train" --threads 1 verify --model "$work/export-$v" --tol 1 | sed "s#$work#\$W#" > "$out/train-$v.verify.txt"
done

# ---- aloe-adapt: aloe-mini (body; body + vocabulary) and a synthesized qwen2 (biases)
make_key "$work/k.key" "$(seed_hex 5)"
"$aloepri" synth --arch qwen2 --kv-heads 2 --seed 4 --out "$work/qwen2" 2>/dev/null
adapt_run() {  # NAME MODEL FLAGS...
  local name=$1 model=$2
  shift 2
  log "aloe-adapt $name"
  "$adapt" --model "$model" --key "$work/k.key" --data "$corpus" --out "$work/$name" --steps 11 --minutes 0 \
    --batch 2 --seq 32 --threads 1 --seed 1 "$@" 2> "$work/$name.log"
  grep -E '^step' "$work/$name.log" | sed -E 's/\)  .*/)/' > "$out/$name.loss.txt"
  sha256sum < "$work/$name/model.safetensors" | cut -d' ' -f1 > "$out/$name.tensors.sha256"
  python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["aloepri_adapted"], open(sys.argv[2], "w"))' \
    "$work/$name/config.json" "$work/$name.rec.json"
  norm_json "$work/$name.rec.json" "$volatile" > "$out/$name.record.json"
}
adapt_run adapt-mini-body "$root/models/aloe-mini"
adapt_run adapt-mini-vocab "$root/models/aloe-mini" --train-vocab --vocab-lr 2e-3
adapt_run adapt-qwen2-vocab "$work/qwen2" --train-vocab --alpha-e 0.5 --alpha-h 0.1

# ---- aloe-attack: ISA (hidden, attn) and IMA on aloe-mini
attack_run() {  # NAME ARGS...
  local name=$1
  shift
  log "aloe-attack $name"
  "$attack" "$@" --plain "$root/models/aloe-mini" --data "$corpus" --work "$work/attack-work" --threads 1 \
    --quiet --out "$work/$name.json" >/dev/null
  norm_json "$work/$name.json" "$volatile" > "$out/$name.json"
}
small=(--windows 2 --seq 16)
attack_run attack-isa-hidden-plain isa --target hidden --layer 1 --no-obf --align none --iters 3 "${small[@]}"
attack_run attack-isa-hidden-exact isa --target hidden --layer 0 --exact --align orthogonal --iters 3 "${small[@]}"
attack_run attack-isa-attn-exact isa --target attn --layer 1 --exact --iters 4 --optim adam "${small[@]}"
attack_run attack-isa-vocab-plain isa --target hidden --layer 0 --no-obf --align none --relax vocab --optim adam --iters 4 "${small[@]}"
attack_run attack-ima-samekey ima --layer 0 --same-key --steps 20 --public-windows 8 --batch 4 --width 32 --depth 1 "${small[@]}"

(cd "$out" && sha256sum -- * | grep -v ' SUMS$') > "$out/SUMS"
if [[ $mode == record ]]; then
  log "recorded $(wc -l < "$out/SUMS") files in $out"
  exit 0
fi
status=0
for f in $(cd "$dir" && ls | grep -v -e '^last$' -e '^SUMS$'); do
  if ! cmp -s "$dir/$f" "$out/$f"; then
    status=1
    python3 - "$dir/$f" "$out/$f" <<'PY'
import re, sys
num = re.compile(r"-?\d+\.?\d*(?:[eE][-+]?\d+)?")
a, b = (open(p).read().splitlines() for p in sys.argv[1:3])
if sys.argv[1].endswith(".sha256"):
    print(f"DIFF {sys.argv[1].rsplit('/', 1)[-1]}: the bytes differ")
    sys.exit(0)
worst, where = 0.0, ""
for i, (x, y) in enumerate(zip(a, b)):
    nx, ny = num.findall(x), num.findall(y)
    if len(nx) != len(ny):
        where = where or f"line {i + 1}: different shape"
        continue
    for p, q in zip(nx, ny):
        d = abs(float(p) - float(q))
        if d > worst:
            worst, where = d, f"line {i + 1}: {p} -> {q}"
if len(a) != len(b):
    where += f" ({len(a)} vs {len(b)} lines)"
print(f"DIFF {sys.argv[1].rsplit('/', 1)[-1]}: max abs diff {worst:.3g} ({where})")
PY
  fi
done
[[ $status == 0 ]] && log "all $(cd "$dir" && ls | grep -v -e '^last$' -e '^SUMS$' | wc -l) files identical"
exit $status
