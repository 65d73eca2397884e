// IA, invariant attacks (method.md section 9):
//  - Gate-IA: the mean over FFN channels of e Diag(w) W_gate is invariant to the channel
//    permutation Zf and to the key matrices (emb~ gate~^T = Pi (E + N) Diag(w) W_gate^T Zf),
//    one scalar per token and layer; only the embedding noise protects it.
//  - Attn-IA: the per-RoPE-block quadratic form q_p . k_p = e Diag(w) W_q,p W_k,p^T Diag(w) e^T
//    is invariant to the pair rotation R and the pair scale H (q gets s, k gets 1/s); read in
//    slot order it is defeated by the head and block permutations (VMA's sorted version is not).
// Features are standardized with the plaintext statistics and matched by nearest neighbour.
#include <chrono>

#include "aloepri/core/error.h"
#include "weight_internal.h"

namespace aloepri::audit {

using namespace internal;

namespace {

Tensor gate_means(const Tensor& X, const ModelWeights& w, bool plain_side) {
  const int64_t n = X.rows(), L = int64_t(w.layers.size());
  Tensor out({n, L});
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    Tensor F = linalg::matmul(plain_side ? scale_cols(X, lw.ffn_norm) : X, lw.w_gate, false, true);
    const int64_t ff = F.cols();
    for (int64_t r = 0; r < n; ++r) {
      double s = 0;
      for (int64_t j = 0; j < ff; ++j) s += F.ptr()[r * ff + j];
      out.at(r, l) = float(s / double(ff));
    }
  }
  return out;
}

Tensor block_forms(const Tensor& X, const ModelWeights& w, const ModelConfig& c, bool plain_side) {
  const int64_t n = X.rows(), L = int64_t(w.layers.size());
  const int64_t m = c.num_attention_heads, mkv = c.num_key_value_heads, dh = c.head_dim, M = dh / 2, g = m / mkv;
  Tensor out({n, L * m * M});
  const int64_t D = out.cols();
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    Tensor Xn = plain_side ? scale_cols(X, lw.attn_norm) : X;
    Tensor Q = linalg::matmul(Xn, lw.wq, false, true), K = linalg::matmul(Xn, lw.wk, false, true);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < m; ++i) {
        const float* q = Q.ptr() + r * m * dh + i * dh;
        const float* k = K.ptr() + r * mkv * dh + (i / g) * dh;
        for (int64_t p = 0; p < M; ++p)
          out.ptr()[r * D + (l * m + i) * M + p] = q[p] * k[p] + q[p + M] * k[p + M];
      }
  }
  return out;
}

VocabAttack run_ia(const char* name, const ModelWeights& plain, const ModelWeights& obf, const Query& query,
                   const WeightAttackOptions& opt, bool gate) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = plain.vocab();
  require(obf.vocab() == n && obf.layers.size() == plain.layers.size(), name, "models do not match");
  require(gate || !plain.config.mla(), name,
          "reads q_proj and k_proj per RoPE block; DeepSeek's latent attention has no k_proj (see the mla-latent attack)");
  Tensor fp = gate ? gate_means(plain.embed, plain, true) : block_forms(plain.embed, plain, plain.config, true);
  Tensor Xq = gather_rows(obf.embed, query.obf_ids);
  Tensor fo = gate ? gate_means(Xq, obf, false) : block_forms(Xq, obf, plain.config, false);
  std::vector<double> mean, sd;
  column_stats(fp, mean, sd);
  standardize(fp, mean, sd);
  standardize(fo, mean, sd);
  VocabAttack out;
  out.attack = name;
  out.guesses = guesses_from(n, query.obf_ids, fo, fp, opt.topk);
  out.details = {{"features", fp.cols()}, {"queried_ids", int64_t(query.obf_ids.size())}};
  out.seconds = seconds_since(t0);
  return out;
}

}  // namespace

VocabAttack gate_ia_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& q,
                           const WeightAttackOptions& opt) {
  return run_ia("Gate-IA", plain, obf, q, opt, true);
}

VocabAttack attn_ia_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& q,
                           const WeightAttackOptions& opt) {
  return run_ia("Attn-IA", plain, obf, q, opt, false);
}

}  // namespace aloepri::audit
