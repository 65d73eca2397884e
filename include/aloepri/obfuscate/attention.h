// Attention transforms of method.md section 5, stage 1 (hidden size unchanged): per-kv-head
// RoPE-pair rotation, scale and BlockPerm, value/output maps, head permutations. HF layout
// (nn.Linear weight = out x in).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/obfuscate/math.h"
#include "aloepri/core/rng.h"
#include "aloepri/core/tensor.h"

namespace aloepri::obf {

// Secrets of one kv head j (shared by its g query heads). Pairs are HF rotate_half pairs
// (p, p + dh/2), p < dh/2.
struct HeadKeys {
  std::vector<double> angle;       // R_j: rotation angle per pair
  // Non-empty (q/k-norm models): R_j turns pair p by quarter[p] * 90 degrees, computed exactly, so
  // that R_j is a signed permutation (the only rotations that commute with a per-element gain).
  std::vector<int> quarter;
  std::vector<double> scale;       // H_j: positive scale per pair (q gets s, k gets 1/s)
  std::vector<int64_t> pair_slot;  // Zb_j: pair p moves to slot pair_slot[p] (BlockPerm)
  Mat U, Uinv;                     // value map (dh x dh) and its inverse
};

struct AttnKeys {
  int64_t group = 1;                            // g = m / m_kv
  std::vector<HeadKeys> kv;                     // by plaintext kv head
  std::vector<int64_t> kv_slot;                 // tau_kv: plaintext kv head -> obfuscated slot
  std::vector<std::vector<int64_t>> group_slot; // tau_group per plaintext kv head: r -> r'
  // Obfuscated slot of plaintext query head i = j g + r.
  int64_t q_slot(int64_t i) const { return kv_slot[i / group] * group + group_slot[i / group][i % group]; }
};

struct AttnKeyOptions {
  int64_t beta = 8;
  double gamma = 1000;
  double scale_range = 2.0;       // H entries log-uniform in [1/r, r] ([choice]: report gives none)
  bool per_group_perm = true;     // [choice]: one tau_group per group (true) or one for all
  double max_cond_factor = 10.0;  // accept U_j when cond(U_j) <= factor * dh
  // 0: the report's U_j (Gaussian N(0, 1/dh), condition-checked as above). K >= 1: U_j =
  // conditioned_matrix(dh, K) with cond(U_j) == K exactly (stream ".../vmap-cond"): the
  // quantizer's rounding of W_v U_j and U_j^-1 W_o is amplified by at most K (issue 7).
  double value_cond = 0;
  // Q/K RMSNorm over head_dim with one gain vector for all heads (Qwen3): the per-head norm only
  // commutes with signed permutations of a head's coordinates, and the gain is shared, so the
  // rotation (quarter turns), the pair scale H and BlockPerm Zb are drawn once per layer for all
  // heads (streams "layer/<l>/attn/qk-shared/{quarter,scale,blockperm}"); H moves from the q/k
  // rows into the gains (g_q h, g_k / h). Value maps and head permutations are as without norms.
  bool qk_norm = false;
};

// Streams: "layer/<l>/attn/kv<j>/{rotation,scale,blockperm,vmap|vmap-cond}", "layer/<l>/attn/kv_perm",
// "layer/<l>/attn/group_perm[/<j>]".
AttnKeys draw_attn_keys(const Seed& seed, int64_t layer, int64_t m, int64_t mkv, int64_t dh,
                        const std::vector<double>& inv_freq, const AttnKeyOptions& opt);

// One attention block in HF layout: q [m dh, d], k/v [mkv dh, d], o [d, m dh], biases [m dh] /
// [mkv dh] or empty.
struct AttnHF {
  Tensor q, k, v, o, bq, bk, bv;
  Tensor q_norm, k_norm;  // [dh] each, q/k-norm models only (empty otherwise)
};
// Stage 1 (hidden size unchanged): q rows of head i -> T_q^T (R H Zb), k rows -> R H^-1 Zb,
// v rows -> U_j^T, o columns -> U_j^-T, heads moved to their slots.
AttnHF transform_attention_heads(const AttnHF& in, const AttnKeys& keys, int64_t dh);
// The q/k norm gains of a q/k-norm layer after its shared keys (g_q permuted then times H,
// g_k permuted then divided by H); all [dh].
void qk_norm_gains(const float* gq, const float* gk, const HeadKeys& hk, int64_t dh, float* gq_out, float* gk_out);
// The per-head map on q (inverse_scale=false) or k (true) as a dh x dh matrix acting on row
// vectors (y = x T); an empty scale means H = 1. For tests.
Mat head_map(const HeadKeys& hk, int64_t dh, bool inverse_scale);

}  // namespace aloepri::obf
