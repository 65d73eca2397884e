// libFuzzer target: arbitrary bytes as a .safetensors file. The reader must either throw
// aloepri::Error or return views that tile the data buffer exactly; anything else (a crash, a
// sanitizer report, another exception type, a view outside the buffer) is a bug.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "aloepri/core/error.h"
#include "aloepri/formats/safetensors.h"

namespace {

// One in-memory file reused for every input: no disk traffic, and /proc/self/fd/N is a path
// the reader can open and mmap like any other file.
int input_fd() {
  static int fd = [] {
    int f = ::memfd_create("safetensors_fuzz", 0);
    if (f < 0) std::abort();
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = input_fd();
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != ssize_t(size)) std::abort();
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    aloepri::SafetensorsReader r(path);
    // Independent check of the tiling invariant, from the input bytes alone.
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    const uint64_t data_size = size - 8 - n;
    std::vector<const aloepri::TensorView*> views;
    for (auto& name : r.names()) views.push_back(&r.get(name));
    std::sort(views.begin(), views.end(), [](auto* a, auto* b) {
      return a->data != b->data ? a->data < b->data : a->nbytes < b->nbytes;
    });
    uint64_t covered = 0;
    for (size_t i = 0; i < views.size(); ++i) {
      if (i > 0 && views[i]->data != views[i - 1]->data + views[i - 1]->nbytes) __builtin_trap();
      covered += views[i]->nbytes;
      if (uint64_t(views[i]->numel()) * aloepri::dtype_size(views[i]->dtype) != views[i]->nbytes)
        __builtin_trap();
      // Read every byte through the converter (bounded so a huge valid input stays fast).
      if (aloepri::dtype_is_float(views[i]->dtype) && views[i]->numel() <= (1 << 16)) {
        std::vector<float> out(size_t(views[i]->numel()));
        views[i]->to_f32(out.data());
      }
    }
    if (covered != data_size) __builtin_trap();
  } catch (const aloepri::Error&) {
    // Refusing malformed input is the expected outcome.
  }
  return 0;
}
