// FFN and mixture-of-experts transforms (method.md section 5): channel permutation and scale, the
// router permutation; see obfuscate/ffn.h.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/obfuscate/ffn.h"
#include "draw.h"

namespace aloepri::obf {

static FfnKeys ffn_keys_at(const Seed& seed, const std::string& base, int64_t ff, double scale_range) {
  FfnKeys K;
  RngStream p(seed, base + "/ffn/perm"), s(seed, base + "/ffn/scale");
  K.slot = p.permutation(ff);
  K.scale.resize(size_t(ff));
  for (auto& x : K.scale) x = detail::log_uniform(s, scale_range);
  return K;
}

FfnKeys draw_ffn_keys(const Seed& seed, int64_t layer, int64_t ff, double scale_range) {
  return ffn_keys_at(seed, detail::layer_stream(layer), ff, scale_range);
}

MoeKeys draw_moe_keys(const Seed& seed, int64_t layer, int64_t n_experts, int64_t expert_ff, double scale_range,
                      int64_t groups) {
  require(n_experts > 0 && expert_ff > 0, "moe", "needs experts of positive width");
  require(groups > 0 && n_experts % groups == 0, "moe", "expert groups must divide the experts");
  MoeKeys K;
  if (groups == 1) {
    RngStream zr(seed, detail::layer_stream(layer) + "/router/perm");
    K.expert_slot = zr.permutation(n_experts);
  } else {
    const int64_t per = n_experts / groups;
    RngStream gr(seed, detail::layer_stream(layer) + "/router/group_perm");
    const std::vector<int64_t> gslot = gr.permutation(groups);
    K.expert_slot.resize(size_t(n_experts));
    for (int64_t g = 0; g < groups; ++g) {
      RngStream zr(seed, detail::layer_stream(layer) + "/router/perm/" + std::to_string(g));
      const std::vector<int64_t> in = zr.permutation(per);
      for (int64_t i = 0; i < per; ++i) K.expert_slot[size_t(g * per + i)] = gslot[size_t(g)] * per + in[size_t(i)];
    }
  }
  for (int64_t e = 0; e < n_experts; ++e)
    K.experts.push_back(ffn_keys_at(seed, detail::layer_stream(layer) + "/expert/" + std::to_string(e), expert_ff, scale_range));
  return K;
}

void normalise_rows(Tensor& w) {
  const int64_t rows = w.rows(), cols = w.cols();
  for (int64_t r = 0; r < rows; ++r) {
    float* x = w.ptr() + r * cols;
    double ss = 0;
    for (int64_t k = 0; k < cols; ++k) ss += double(x[k]) * x[k];
    require(ss > 0, "router", "row " + std::to_string(r) + " is zero and cannot be normalised");
    const double inv = 1.0 / std::sqrt(ss);
    for (int64_t k = 0; k < cols; ++k) x[k] = float(x[k] * inv);
  }
}

Tensor permute_router(const Tensor& router, const std::vector<int64_t>& slot) {
  const int64_t E = router.rows(), d = router.cols();
  require(int64_t(slot.size()) == E, "router", "has " + std::to_string(E) + " expert rows, the permutation " +
                                                   std::to_string(slot.size()) + " entries");
  Tensor out(router.shape);
  for (int64_t e = 0; e < E; ++e) std::copy_n(router.ptr() + e * d, d, out.ptr() + slot[e] * d);
  return out;
}

// Moves row c of a [rows, d] matrix to row slot[c], in place (cycle by cycle, one spare row),
// so a layer's FFN is never held twice.
static void permute_rows_in_place(Tensor& t, const std::vector<int64_t>& slot) {
  const int64_t rows = t.rows(), d = t.cols();
  std::vector<char> done(static_cast<size_t>(rows), 0);
  std::vector<float> carry(static_cast<size_t>(d)), next(static_cast<size_t>(d));
  for (int64_t start = 0; start < rows; ++start) {
    if (done[size_t(start)]) continue;
    // Follow start -> slot[start] -> ...: each row goes where slot sends it.
    std::copy(t.ptr() + start * d, t.ptr() + (start + 1) * d, carry.begin());
    int64_t c = start;
    while (!done[size_t(c)]) {
      done[size_t(c)] = 1;
      const int64_t s = slot[size_t(c)];
      std::copy(t.ptr() + s * d, t.ptr() + (s + 1) * d, next.begin());
      std::copy(carry.begin(), carry.end(), t.ptr() + s * d);
      std::swap(carry, next);
      c = s;
    }
  }
}

FfnHF transform_ffn_channels(FfnHF f, const FfnKeys& K) {
  const int64_t ff = f.gate.rows(), d = f.gate.cols();
  require(f.up.rows() == ff && f.up.cols() == d && f.down.rows() == d && f.down.cols() == ff &&
              int64_t(K.slot.size()) == ff,
          "ffn", "projection shapes do not match");
  std::vector<char> seen(static_cast<size_t>(ff), 0);
  for (int64_t c = 0; c < ff; ++c) {
    const int64_t s = K.slot[size_t(c)];
    require(s >= 0 && s < ff && !seen[size_t(s)], "ffn", "channel keys are not a permutation", kExitError);
    seen[size_t(s)] = 1;
  }
  for (int64_t c = 0; c < ff; ++c) {
    const float sc = float(K.scale[size_t(c)]);
    float* row = f.up.ptr() + c * d;
    for (int64_t k = 0; k < d; ++k) row[k] = row[k] * sc;
  }
  permute_rows_in_place(f.gate, K.slot);
  permute_rows_in_place(f.up, K.slot);
  std::vector<float> tmp(static_cast<size_t>(ff));
  for (int64_t r = 0; r < d; ++r) {
    float* row = f.down.ptr() + r * ff;
    for (int64_t c = 0; c < ff; ++c) tmp[size_t(K.slot[size_t(c)])] = float(double(row[c]) / K.scale[size_t(c)]);
    std::copy(tmp.begin(), tmp.end(), row);
  }
  return f;
}

}  // namespace aloepri::obf
