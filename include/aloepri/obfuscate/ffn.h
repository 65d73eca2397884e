// FFN and mixture-of-experts transforms of method.md section 5, stage 1: channel permutation and
// scale; experts reordered with the router rows. HF layout (nn.Linear weight = out x in).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/core/rng.h"
#include "aloepri/core/tensor.h"

namespace aloepri::obf {

struct FfnKeys {
  std::vector<int64_t> slot;   // Zf: channel c -> slot[c]
  std::vector<double> scale;   // Hf: positive scale per channel (on up; 1/scale on down)
};
// Streams "layer/<l>/ffn/perm", "layer/<l>/ffn/scale".
FfnKeys draw_ffn_keys(const Seed& seed, int64_t layer, int64_t ff, double scale_range);
struct FfnHF {
  Tensor gate, up, down;  // [ff, d], [ff, d], [d, ff]
};
// By value and in place: a caller that moves its layer in never holds the FFN twice.
FfnHF transform_ffn_channels(FfnHF in, const FfnKeys& keys);

// Mixture of experts (qwen3_moe sparse layers). The router is a reader whose output rows are the
// experts: permuting them by Z_router (and storing expert e at slot Z_router(e)) permutes the
// softmax and the top-k choice with them, so routing is unchanged up to the relabelling. Each
// expert is an FFN with its own channel keys; every expert's down projection writes through the
// layer's one residual map.
struct MoeKeys {
  std::vector<int64_t> expert_slot;  // Z_router: plaintext expert e -> slot expert_slot[e]
  std::vector<FfnKeys> experts;      // channel keys of plaintext expert e
};
// Streams "layer/<l>/router/perm", "layer/<l>/expert/<e>/ffn/perm", "layer/<l>/expert/<e>/ffn/scale".
// groups > 1 (DeepSeek's group-limited routing): Z_router keeps each group of n_experts / groups
// consecutive experts together, permuting the groups ("layer/<l>/router/group_perm") and the
// experts inside each ("layer/<l>/router/perm/<g>"), so a group's score and the groups kept move
// with the experts.
MoeKeys draw_moe_keys(const Seed& seed, int64_t layer, int64_t n_experts, int64_t expert_ff, double scale_range,
                      int64_t groups = 1);
// Router [E, d] HF rows -> row expert_slot[e] holds plaintext row e.
Tensor permute_router(const Tensor& router, const std::vector<int64_t>& expert_slot);
// Every row of w [rows, cols] divided by its Euclidean norm (--router-norm; not exact).
void normalise_rows(Tensor& w);

}  // namespace aloepri::obf
