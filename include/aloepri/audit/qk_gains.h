// What Qwen3's published q/k norm gains give away (issue 16). The exact transform of a q/k-norm
// layer moves the gains with its shared pair map (obfuscate/attention.h qk_norm_gains): pair p
// goes to slot Zb(p), its two coordinates swapped by an odd number of quarter turns, g_q times
// h_p and g_k divided by it. So g~_q * g~_k = Zb(swap(g_q * g_k)): matching each obfuscated
// slot's unordered pair of products to a plaintext pair's recovers Zb and the swaps, and then
// h_p = g~_q / g_q. Needs only the two checkpoints' gains.
#pragma once
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/engine/forward.h"

namespace aloepri::audit {

struct QkGainRecovery {
  int64_t layer = 0;
  std::vector<int64_t> pair_slot;  // the attacker's slot for each plaintext pair
  std::vector<bool> swapped;       // ... and whether its two coordinates swapped
  std::vector<double> scale;       // ... and h_p
};

// Every layer of a q/k-norm model pair (qwen3, qwen3_moe). Throws Error for a model without q/k norms.
std::vector<QkGainRecovery> qk_gain_attack(const ModelWeights& plain, const ModelWeights& obf);

}  // namespace aloepri::audit
