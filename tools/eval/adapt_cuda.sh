#!/usr/bin/env bash
# Builds aloe-adapt (tools/train/adapt.cpp) for CUDA against the libtorch inside a pip-installed
# PyTorch, on a GPU machine without the project's Debian packages (same recipe as
# tools/train/cuda_build.sh; DEPS as described there). The standalone build replicates the
# obfuscator's noise with the core RNG (no obfuscate module / LAPACKE); the CPU build checks the
# replica against the obfuscator when it assembles the checkpoint (--body-in).
# usage: DEPS=.devdeps tools/eval/adapt_cuda.sh OUT_DIR
set -euo pipefail
out=${1:?usage: adapt_cuda.sh OUT_DIR}
deps=$(cd "${DEPS:-.devdeps}" && pwd)/usr
torch_dir=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
abi=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
mkdir -p "$out"
export CXXFLAGS="-O2 -std=c++20 -DNDEBUG -DALOEPRI_ADAPT_STANDALONE -D_GLIBCXX_USE_CXX11_ABI=$abi -Iinclude \
 -I$deps/include -I$deps/include/x86_64-linux-gnu -I$torch_dir/include -I$torch_dir/include/torch/csrc/api/include"
export OUTDIR=$out
ls src/core/*.cpp src/formats/*.cpp src/engine/*.cpp tools/train/adapt.cpp |
  xargs -P"$(nproc)" -I{} sh -c 'g++ $CXXFLAGS -c {} -o "$OUTDIR/$(echo {} | tr / _).o"'
lib=$deps/lib/x86_64-linux-gnu
g++ -o "$out/aloe-adapt" "$out"/*.o -L"$torch_dir/lib" -Wl,-rpath,"$torch_dir/lib" \
  -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed -ltorch -ltorch_cpu -lc10 \
  -L"$lib" -L"$lib/blas" -Wl,-rpath,"$lib:$lib/blas" -lsodium -l:libblas.so.3 -lpthread
echo "built $out/aloe-adapt"
