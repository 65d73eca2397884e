// DeepSeek multi-head latent attention transforms, stage 1 (hidden size unchanged), HF layout
// (nn.Linear weight = out x in). Every map is exact on an unmodified engine:
// - the q and kv latents get Haar orthogonal maps R_q, R_kv: an RMSNorm commutes with an orthogonal
//   map but not with its gain, so the gain g is folded into the next projection (W_b diag(g) R
//   diag(1/g'), published gain g' = g);
// - per head a nope map A_h (q side A_h, key side A_h^-T) and a value map U_h (value rows U_h^T,
//   o_proj columns U_h^-T), conditioned to cond (the quantizer's error grows at most by it);
// - one complex scaling per RoPE pair, s_p e^{i theta_p}, shared by every head because k_pe is one
//   vector for all heads (q side M_p, k side M_p^-T): it commutes with RoPE's rotation of the pair;
// - a head permutation (q rows, kv_b rows and o_proj columns move together).
// Pairs are not permuted: they rotate at different frequencies (BlockPerm is approximate).
#pragma once
#include <cstdint>
#include <vector>

#include "aloepri/core/rng.h"
#include "aloepri/core/tensor.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/obfuscate/math.h"

namespace aloepri::obf {

struct MlaKeys {
  Mat Rq, Rkv;                       // [q_lora x q_lora] (empty without a q latent), [kv_lora x kv_lora]
  std::vector<Mat> A, Ainv;          // per plaintext head, [nope x nope]
  std::vector<Mat> U, Uinv;          // per plaintext head, [v x v]
  std::vector<double> angle, scale;  // per RoPE pair (rope / 2), every head
  std::vector<int64_t> head_slot;    // plaintext head -> obfuscated slot
};
// Streams "layer/<l>/mla/{q-latent,kv-latent,rope,head_perm}", "layer/<l>/mla/head<h>/{nope,vmap}".
// cond >= 1: the condition number of A_h and U_h; scale_range: the pair scales, log-uniform.
MlaKeys draw_mla_keys(const Seed& seed, int64_t layer, const ModelConfig& c, double cond, double scale_range);

// One MLA block: q_a [ql, d], q_a_norm [ql], q_b [H dh, ql] (or q [H dh, d] without a q latent),
// kv_a [kvl + rope, d], kv_a_norm [kvl], kv_b [H (nope + v), kvl], o [d, H v].
struct MlaHF {
  Tensor q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o;
};
// By value: the caller moves its layer in. Readers of the residual (q_a or q, kv_a) keep their
// input side for stage 2; o keeps its output side.
MlaHF transform_mla(MlaHF in, const MlaKeys& keys, const ModelConfig& c);

}  // namespace aloepri::obf
