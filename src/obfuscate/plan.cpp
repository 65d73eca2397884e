// The output plan: the layout's tensors with the obfuscated sizes, each tagged with its step; read-ahead
// of a step; the steps of a shard.
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

// The layout's tensors with the obfuscated sizes (hidden d', vocabulary n' = n plus the homophone
// copies), the head always its own tensor. Their order is the order the steps below compute them.
std::vector<OutTensor> declare_outputs(const ModelConfig& c, int64_t dp, DType dt, int64_t np) {
  layout::Dims dims = layout::Dims::of(c);
  dims.hidden = dp;
  dims.vocab = np;
  const int64_t L = c.num_hidden_layers;
  std::vector<OutTensor> v;
  // Norm weights and biases follow the output dtype too, for a uniform standard checkpoint.
  for (auto& t : layout::tensors(c, dims, /*include_tied_head=*/true)) {
    const int64_t step = t.layer >= 0 ? 1 + t.layer : t.def->role == layout::Role::Embedding ? 0 : L + 1;
    v.push_back({{std::move(t.name), dt, std::move(t.shape)}, step});
  }
  return v;
}

// Asks the kernel to read a step's plaintext tensors ahead (MADV_WILLNEED starts the reads and
// returns), so a checkpoint that is not in the page cache arrives while the previous step
// computes instead of one page fault at a time.
void prefetch_step(const HFModel& m, const std::vector<OutTensor>& outs, int64_t step) {
  const uintptr_t pg = uintptr_t(::sysconf(_SC_PAGESIZE));
  for (const auto& o : outs) {
    if (o.step != step || !m.weights().has(o.spec.name)) continue;
    const TensorView& v = m.weights().get(o.spec.name);
    const uintptr_t b = uintptr_t(v.data) & ~(pg - 1), e = uintptr_t(v.data) + v.nbytes;
    if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_WILLNEED);
  }
}


// Steps [first, last) of shard `index` of `count`: contiguous, balanced by output bytes (a step
// goes to the shard its byte midpoint falls in). A shard may be empty when count > steps.
std::pair<int64_t, int64_t> shard_steps(const std::vector<OutTensor>& outs, int64_t steps, int index, int count) {
  std::vector<double> w(size_t(steps), 0.0);
  double total = 0;
  for (const auto& o : outs) {
    w[size_t(o.step)] += double(o.spec.nbytes());
    total += double(o.spec.nbytes());
  }
  int64_t first = steps, last = 0;
  double before = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int owner = std::min(count - 1, int((before + w[size_t(s)] / 2) / total * count));
    before += w[size_t(s)];
    if (owner == index) {
      first = std::min(first, s);
      last = s + 1;
    }
  }
  if (first >= last) first = last = 0;
  return {first, last};
}

}  // namespace aloepri
