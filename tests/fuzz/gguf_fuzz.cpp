// libFuzzer target: arbitrary bytes as a GGUF file. The reader must either throw aloepri::Error
// or describe a file whose every tensor lies, aligned and non-overlapping, inside the buffer;
// anything else (a crash, a sanitizer report, another exception type) is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "aloepri/core/error.h"
#include "aloepri/formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace aloepri::gguf;
  try {
    GGUFReader r(data, size, "fuzz.gguf");
    if (r.data_offset() % r.alignment() != 0) __builtin_trap();
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const auto& t : r.tensors()) {
      if (t.offset % r.alignment() != 0) __builtin_trap();
      if (t.data < data || t.data + t.nbytes > data + size) __builtin_trap();
      if (t.nbytes != ggml_nbytes(t.type, t.ne)) __builtin_trap();
      spans.emplace_back(t.offset, t.offset + t.nbytes);
      // Touch the bytes (AddressSanitizer checks the bounds) for the types we can decode.
      if ((t.type == GGMLType::F32 || t.type == GGMLType::F16 || t.type == GGMLType::BF16) && t.nbytes <= (1u << 20))
        (void)r.read_f32(t.name);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i)
      if (spans[i - 1].second > spans[i].first) __builtin_trap();
    for (const auto& [key, v] : r.metadata()) {
      if (key.empty() || !r.has(key)) __builtin_trap();
      if (!v.is_array() && v.size() != 1) __builtin_trap();
    }
  } catch (const aloepri::Error&) {
  }
  return 0;
}
