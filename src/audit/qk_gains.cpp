// The q/k norm gain attack (see qk_gains.h).
#include "aloepri/audit/qk_gains.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "aloepri/core/error.h"

namespace aloepri::audit {

std::vector<QkGainRecovery> qk_gain_attack(const ModelWeights& plain, const ModelWeights& obf) {
  const ModelConfig& c = plain.config;
  require(c.qk_norm, "qk-gains", "the model has no q/k norms (only qwen3 and qwen3_moe have them)");
  require(plain.layers.size() == obf.layers.size(), "qk-gains", "layer counts differ");
  const int64_t M = c.head_dim / 2;
  std::vector<QkGainRecovery> out;
  for (size_t l = 0; l < plain.layers.size(); ++l) {
    const LayerWeights& P = plain.layers[l];
    const LayerWeights& O = obf.layers[l];
    auto prod = [&](const LayerWeights& L, int64_t i) { return double(L.q_norm.data[size_t(i)]) * double(L.k_norm.data[size_t(i)]); };
    // Unordered pair of products per pair (plaintext) and per slot (obfuscated): (small, large).
    auto key = [&](const LayerWeights& L, int64_t p) {
      const double a = prod(L, p), b = prod(L, p + M);
      return std::pair<double, double>{std::min(a, b), std::max(a, b)};
    };
    std::vector<std::tuple<double, int64_t, int64_t>> cost;  // (distance, slot, pair)
    for (int64_t s = 0; s < M; ++s)
      for (int64_t p = 0; p < M; ++p) {
        const auto ko = key(O, s), kp = key(P, p);
        const double scale = std::max({std::fabs(kp.first), std::fabs(kp.second), 1e-30});
        cost.emplace_back((std::fabs(ko.first - kp.first) + std::fabs(ko.second - kp.second)) / scale, s, p);
      }
    std::sort(cost.begin(), cost.end());
    QkGainRecovery r;
    r.layer = int64_t(l);
    r.pair_slot.assign(size_t(M), -1);
    r.swapped.assign(size_t(M), false);
    r.scale.assign(size_t(M), 0.0);
    std::vector<bool> taken(static_cast<size_t>(M), false);
    for (const auto& [dist, s, p] : cost) {
      if (r.pair_slot[size_t(p)] >= 0 || taken[size_t(s)]) continue;
      r.pair_slot[size_t(p)] = s;
      taken[size_t(s)] = true;
      // Orientation: which plaintext coordinate lands in the slot's first position.
      const double straight = std::fabs(prod(O, s) - prod(P, p)) + std::fabs(prod(O, s + M) - prod(P, p + M));
      const double crossed = std::fabs(prod(O, s) - prod(P, p + M)) + std::fabs(prod(O, s + M) - prod(P, p));
      r.swapped[size_t(p)] = crossed < straight;
      const int64_t src = r.swapped[size_t(p)] ? p + M : p;
      r.scale[size_t(p)] = double(O.q_norm.data[size_t(s)]) / double(P.q_norm.data[size_t(src)]);
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace aloepri::audit
