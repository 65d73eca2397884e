// Per-component transforms of method.md section 5 on in-memory tensors in Hugging Face layout
// (nn.Linear weight = out x in). Each transform splits into
//   stage 1: secrets local to a block (RoPE-pair rotation/scale/permutation, value/output maps,
//            head permutations, FFN channel permutation/scale), still in the plaintext hidden
//            space, and exact (BlockPerm apart) by construction;
//   stage 2: the residual-stream key matrices: readers W Diag(w_norm) Q^T, writers P^T W.
// The executor (obfuscate.h) strings them together; the tests check each one on its own.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "aloepri/homophones.h"
#include "aloepri/obf_math.h"
#include "aloepri/rng.h"
#include "aloepri/tensor.h"

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
MoeKeys draw_moe_keys(const Seed& seed, int64_t layer, int64_t n_experts, int64_t expert_ff, double scale_range);
// Router [E, d] HF rows -> row expert_slot[e] holds plaintext row e.
Tensor permute_router(const Tensor& router, const std::vector<int64_t>& expert_slot);
// Every row of w [rows, cols] divided by its Euclidean norm (--router-norm; not exact).
void normalise_rows(Tensor& w);

// Stage 2. Reader: W [out, d] -> W Diag(norm_w) Q^T  [out, d'] (norm_w empty = ones).
// W by value: the norm scaling is applied to it in place, so a caller that moves its last use
// in saves an out x d copy.
Tensor read_residual(Tensor w, const std::vector<float>& norm_w, const Tensor& Qf);
// Writer: W [d, in] -> P^T W  [d', in].
Tensor write_residual(const Tensor& w, const Tensor& Pf);
// Bias of a reader: unchanged by Q (it is added after the projection).

// Embedding / head noise scale ([choice] global std or per-row std).
enum class NoiseScale { Global, PerRow };
// W~_emb = Pi (W_emb + alpha sigma N) P: row tau[t] of the result is row t of the plaintext.
// Noise is drawn from `rng` in plaintext row order.
Tensor obfuscate_embedding(const Tensor& emb, const std::vector<int64_t>& tau, double alpha,
                           NoiseScale ns, RngStream& rng, const Tensor& Pf);
// HF lm_head [n, d] -> [n, d']: row tau[t] = ((head[t] + alpha sigma N) * w_final) Q^T.
Tensor obfuscate_head(const Tensor& head, const std::vector<int64_t>& tau, double alpha,
                      NoiseScale ns, RngStream& rng, const std::vector<float>& final_norm,
                      const Tensor& Qf);

// The streaming core of both: rows come from fetch(first_row, count, dst) in plaintext order and
// chunks of 2048 rows (so a memory-mapped source is read once, in order, and never copied whole);
// each row gets noise, is scaled by col_scale (if any) and multiplied by M (writer: x M with M
// d x d'; reader: x M^T with M d' x d), and lands in output row tau[t].
using RowFetch = std::function<void(int64_t first_row, int64_t count, float* dst)>;
Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const std::vector<int64_t>& tau,
                              double alpha, NoiseScale ns, RngStream& rng, const std::vector<float>& col_scale,
                              const Tensor& M, bool reader);
// The same over a homophonic vocabulary (homophones.h): [n, d] -> [n', d']. Copy 0 of id t is
// the row above (the same noise draw from `rng`; a map without copies gives the same bytes); copy
// c >= 1 is t's row with its own noise draw from copy_stream(c) (one domain-separated stream per
// copy rank, rows in plaintext order), and lands in output row map.id(t, c). Without noise all
// copies of t are the same row.
using CopyStream = std::function<RngStream(int64_t copy)>;
Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const VocabMap& map, double alpha,
                              NoiseScale ns, RngStream& rng, const CopyStream& copy_stream,
                              const std::vector<float>& col_scale, const Tensor& M, bool reader);

}  // namespace aloepri::obf
