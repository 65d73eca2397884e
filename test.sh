#!/usr/bin/env bash
# The whole test suite: C++ (ctest), the llama.cpp harness (node --test), and a short fuzz run
# of the parsers. Assumes ./setup.sh has run (it builds into build/); rebuilds incrementally.
set -uo pipefail
cd "$(dirname "$0")"
cmake --build build -j"${ALOEPRI_JOBS:-2}" || exit 1
status=0
log=$(mktemp)
(cd build && ctest --output-on-failure -j"${ALOEPRI_JOBS:-2}") 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
passed=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\2 \1/p' "$log" | awk '{print $1-$2}')
failed=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\1/p' "$log")
if [ -d harness/llamacpp/test ]; then
  node --test harness/llamacpp/test/ tests/e2e/ 2>&1 | tee "$log"  # harness + proxy e2e (openai client)
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  passed=$(( ${passed:-0} + $(sed -nE 's/^# pass ([0-9]+)/\1/p' "$log" | tail -1) ))
  failed=$(( ${failed:-0} + $(sed -nE 's/^# fail ([0-9]+)/\1/p' "$log" | tail -1) ))
fi
rm -f "$log"
# The parsers face untrusted files: fuzz them for a short fixed budget on every run.
tools/fuzz.sh "${ALOEPRI_FUZZ_SECONDS:-15}" || { status=1; failed=$(( ${failed:-0} + 1 )); }
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit $status
