#!/usr/bin/env bash
# Builds aloe-train against the libtorch inside a pip-installed CUDA PyTorch, on a GPU machine
# that lacks the project's Debian packages (used to train the shipped aloe-mini on a lent H200;
# the CPU build via -DALOEPRI_WITH_TORCH=ON stays the reference recipe).
#   DEPS: a prefix holding the headers and shared libraries of libsodium, CLI11, nlohmann-json
#         and a CBLAS, e.g. `apt-get download libsodium-dev libsodium23 libcli11-dev
#         nlohmann-json3-dev libblas3 libblas-dev` unpacked with `dpkg -x` (cblas.h is the
#         alternatives link to cblas-netlib.h: copy it).
# usage: DEPS=.devdeps tools/train/cuda_build.sh OUT_DIR [MAIN_SOURCE [EXE_NAME [EXTRA_CXXFLAGS]]]
#        (default tools/train/train.cpp -> aloe-train; tools/eval/adapt_cuda.sh builds aloe-adapt)
set -euo pipefail
out=${1:?usage: cuda_build.sh OUT_DIR [MAIN_SOURCE [EXE_NAME [EXTRA_CXXFLAGS]]]}
main_src=${2:-tools/train/train.cpp}
exe=${3:-aloe-train}
extra=${4:-}
deps=$(cd "${DEPS:-.devdeps}" && pwd)/usr
torch_dir=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
abi=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
mkdir -p "$out"
export CXXFLAGS="-O2 -std=c++20 -DNDEBUG $extra -D_GLIBCXX_USE_CXX11_ABI=$abi -Iinclude -Itools -I$deps/include \
 -I$deps/include/x86_64-linux-gnu -I$torch_dir/include -I$torch_dir/include/torch/csrc/api/include"
export OUTDIR=$out
# Only what the trainers need: core, formats, engine (the reference forward for `verify`), the
# BLAS half of linalg (the engine's GEMMs; lapack.cpp is not needed) and the shared libtorch model.
ls src/core/*.cpp src/formats/*.cpp src/linalg/linalg.cpp src/engine/*.cpp tools/torch_model/llama.cpp "$main_src" |
  xargs -P"$(nproc)" -I{} sh -c 'g++ $CXXFLAGS -c {} -o "$OUTDIR/$(echo {} | tr / _).o"'
lib=$deps/lib/x86_64-linux-gnu
g++ -o "$out/$exe" "$out"/*.o -L"$torch_dir/lib" -Wl,-rpath,"$torch_dir/lib" \
  -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed -ltorch -ltorch_cpu -lc10 \
  -L"$lib" -L"$lib/blas" -Wl,-rpath,"$lib:$lib/blas" -lsodium -l:libblas.so.3 -lpthread
echo "built $out/$exe"
