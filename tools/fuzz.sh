#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz/*_fuzz.cpp) with clang + ASan/UBSan in build-fuzz/
# and run each for a fixed time budget from a generated seed corpus. Exits non-zero if a target
# fails to build or the fuzzer finds a crash (the reproducer lands in build-fuzz/artifacts/).
#   tools/fuzz.sh [SECONDS_PER_TARGET=20] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-20}"
shift || true
build=build-fuzz
jobs="${ALOEPRI_JOBS:-2}"

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DALOEPRI_FUZZ=ON -DALOEPRI_BUILD_TESTS=OFF -DALOEPRI_BUILD_BENCH=OFF >/dev/null

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in tests/fuzz/*_fuzz.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
cmake --build "$build" -j"$jobs" --target fuzz_seeds "${targets[@]}"

corpus="$build/corpus"
mkdir -p "$corpus" "$build/artifacts"
"$build/tests/fuzz/fuzz_seeds" "$corpus" >/dev/null

status=0
for t in "${targets[@]}"; do
  mkdir -p "$corpus/$t"
  # Inputs that once crashed a target run first, every time (libFuzzer starts with the corpus).
  if [ -d "tests/fuzz/regressions/$t" ]; then cp tests/fuzz/regressions/"$t"/* "$corpus/$t/"; fi
  echo "[fuzz] $t for ${budget}s"
  if ! "$build/tests/fuzz/$t" "$corpus/$t" -max_total_time="$budget" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
        >"$build/$t.log" 2>&1; then
    echo "[fuzz] $t FAILED; log: $build/$t.log" >&2
    tail -n 40 "$build/$t.log" >&2
    status=1
  else
    grep -E "stat::number_of_executed_units|cov:" "$build/$t.log" | tail -n 2
  fi
done
exit $status
