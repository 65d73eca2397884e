// Reading the plaintext checkpoint: f32 copies of one tensor at a time, pages released behind.
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>

#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "aloepri/model/layout.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "executor_internal.h"

namespace fs = std::filesystem;

namespace aloepri {

// Reads a plaintext tensor as f32 and drops its pages of the read-only mapping afterwards, so
// resident memory stays at one layer instead of growing with every layer read (file-backed
// pages count in RSS until the kernel evicts them).
void release_range(const uint8_t* p, size_t n) {
  const uintptr_t pg = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (uintptr_t(p) + pg - 1) & ~(pg - 1), e = (uintptr_t(p) + n) & ~(pg - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

Tensor load_and_release(const HFModel& m, const std::string& name) {
  const TensorView& v = m.weights().get(name);
  Tensor t = v.to_f32();
  release_range(v.data, v.nbytes);
  return t;
}

// Rows of a stored [n, d] tensor straight from the mapping (converted to f32), pages released
// behind the reader: the embedding / head is never held whole in f32.
obf::RowFetch mapped_rows(const TensorView& v) {
  return [&v](int64_t r0, int64_t m, float* dst) {
    const int64_t d = v.shape.at(1);
    const size_t es = dtype_size(v.dtype);
    const uint8_t* src = v.data + size_t(r0 * d) * es;
    convert_to_f32(v.dtype, src, dst, size_t(m * d));
    release_range(src, size_t(m * d) * es);
  };
}

}  // namespace aloepri
