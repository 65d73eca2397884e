#!/usr/bin/env bash
# The whole test suite: C++ (ctest) and the llama.cpp harness (node --test).
# Assumes ./setup.sh has run (it builds into build/); rebuilds incrementally first.
set -euo pipefail
cd "$(dirname "$0")"
cmake --build build -j"${ALOEPRI_JOBS:-2}"
status=0
(cd build && ctest --output-on-failure -j"${ALOEPRI_JOBS:-2}") || status=1
if [ -d engine/llamacpp/test ]; then
  (cd engine/llamacpp && node --test test/) || status=1
fi
# The parsers face untrusted files: fuzz them for a short fixed budget on every run.
tools/fuzz.sh "${ALOEPRI_FUZZ_SECONDS:-15}" || status=1
exit $status
