#!/usr/bin/env bash
# Builds aloe-adapt (tools/train/adapt.cpp) for CUDA against the libtorch inside a pip-installed
# PyTorch, on a GPU machine without the project's Debian packages (same recipe as
# tools/train/cuda_build.sh; DEPS as described there). The standalone build replicates the
# obfuscator's noise with the core RNG (no obfuscate module / LAPACKE); the CPU build checks the
# replica against the obfuscator when it assembles the checkpoint (--body-in).
# usage: DEPS=.devdeps tools/eval/adapt_cuda.sh OUT_DIR
set -euo pipefail
out=${1:?usage: adapt_cuda.sh OUT_DIR}
exec "$(dirname "$0")/../train/cuda_build.sh" "$out" tools/train/adapt.cpp aloe-adapt -DALOEPRI_ADAPT_STANDALONE
