// VMA, the vocabulary matching attack (method.md section 9): for a weight pair Y = Pi X Z2
// (X computable from the plaintext model, Y from the obfuscated one, Z2 a secret permutation,
// possibly with positive scales), sort every row to remove Z2, then match rows to recover Pi.
//
// The key matrices cancel in every reader x writer product (P_i Q_j = I), so the obfuscated
// embedding against any obfuscated reader is the noisy plaintext product up to the reader's
// stage-1 secrets:
//   emb~ gate~^T = Pi (E + N_e) Diag(w) W_gate^T Zf          (sort rows)
//   emb~ up~^T   = Pi (E + N_e) Diag(w) W_up^T Hf Zf         (normalize columns, sort rows)
//   emb~ q~^T, emb~ k~^T per RoPE pair p of head i: q_p . k_p is invariant to R and H
//                (the per-block quadratic form), heads and blocks permuted (sort rows);
//                pair norms |q_p|, |k_p| are invariant to R, scaled by H (normalize columns)
//   head~ down~  = Pi (H + N_h) Diag(w_f) W_down Hf^-1 Zf     (normalize columns, sort rows)
//   emb~ head~^T = Pi (E + N_e) Diag(w_f) (H + N_h)^T Pi^T     (sort rows: n x n, streamed)
// Each pair gives a signature per token (sorted values at fixed quantiles, centred, unit norm);
// votes across pairs and layers are the concatenation of signatures, each pair weighted by the
// inverse of its noise variance, which the attacker estimates by pushing the public model
// through the mechanism's noise himself (he knows alpha_e, alpha_h, not the seed).
#include <chrono>
#include <cmath>
#include <functional>

#include "aloepri/core/error.h"
#include "weight_internal.h"

namespace aloepri::audit {

using namespace internal;

namespace {

struct PairSpec {
  std::string name;
  // Features [rows, c] of a model for the given rows (all rows when empty); `noisy`: plaintext
  // with the attacker's simulated noise (plain side only).
  std::function<Tensor(bool obf_side, bool noisy, const std::vector<int32_t>* rows)> features;
  bool needs_all_rows = true;  // column normalization uses statistics over every row
  bool normalize = false;
};

// Pair-wise features of one attention block: for query head i (kv head i/g) and RoPE pair p
// (rotate_half: coordinates p and p + dh/2): q_p . k_p, |q_p|, |k_p|.
enum class QkFeat { Dot, QNorm, KNorm };
Tensor qk_features(const Tensor& Xq, const Tensor& Xk, int64_t m, int64_t mkv, int64_t dh, QkFeat f) {
  const int64_t n = Xq.rows(), M = dh / 2, g = m / mkv;
  const int64_t heads = f == QkFeat::KNorm ? mkv : m;
  Tensor out({n, heads * M});
  for (int64_t r = 0; r < n; ++r) {
    const float* q = Xq.ptr() + r * m * dh;
    const float* k = Xk.ptr() + r * mkv * dh;
    float* o = out.ptr() + r * heads * M;
    for (int64_t i = 0; i < heads; ++i)
      for (int64_t p = 0; p < M; ++p) {
        if (f == QkFeat::KNorm) {
          const float* kh = k + i * dh;
          o[i * M + p] = std::sqrt(kh[p] * kh[p] + kh[p + M] * kh[p + M]);
          continue;
        }
        const float* qh = q + i * dh;
        const float* kh = k + (i / g) * dh;
        o[i * M + p] = f == QkFeat::Dot ? qh[p] * kh[p] + qh[p + M] * kh[p + M]
                                        : std::sqrt(qh[p] * qh[p] + qh[p + M] * qh[p + M]);
      }
  }
  return out;
}

}  // namespace

VocabAttack vma_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& query,
                       const WeightAttackOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = plain.vocab();
  require(obf.vocab() == n, "audit", "plaintext and obfuscated vocabularies differ");
  require(obf.layers.size() == plain.layers.size(), "audit", "layer counts differ");
  const ModelConfig& c = plain.config;
  const int64_t m = c.num_attention_heads, mkv = c.num_key_value_heads, dh = c.head_dim;

  // The attacker's noisy copy of the public model (his own randomness, the published alphas).
  Seed s{};
  for (size_t i = 0; i < 8; ++i) s[i] = uint8_t(opt.sim_seed >> (8 * i));
  RngStream rng(s, "audit/vma/sim");
  const Tensor E_sim = add_noise(plain.embed, opt.mech.alpha_e, opt.mech.per_row_noise, rng);
  const Tensor H_sim = add_noise(plain.head, opt.mech.alpha_h, opt.mech.per_row_noise, rng);
  const Tensor Hf = scale_cols(plain.head, plain.final_norm);
  const Tensor Hf_sim = scale_cols(H_sim, plain.final_norm);

  auto rows_of = [](const Tensor& A, const std::vector<int32_t>* rows) { return rows ? gather_rows(A, *rows) : A; };

  std::vector<PairSpec> pairs;
  for (size_t l = 0; l < plain.layers.size(); ++l) {
    const LayerWeights* Pp = &plain.layers[l];
    const LayerWeights* Op = &obf.layers[l];
    const std::string ls = std::to_string(l);
    for (const char* which : {"gate", "up"}) {
      const bool is_gate = std::string(which) == "gate";
      pairs.push_back({std::string("emb.") + which + "/" + ls,
                       [&, Pp, Op, is_gate](bool o, bool noisy, const std::vector<int32_t>*) {
                         const LayerWeights& P = *Pp;
                         const LayerWeights& O = *Op;
                         if (o) return linalg::matmul(obf.embed, is_gate ? O.w_gate : O.w_up, false, true);
                         return linalg::matmul(scale_cols(noisy ? E_sim : plain.embed, P.ffn_norm), is_gate ? P.w_gate : P.w_up, false, true);
                       },
                       true, true});
    }
    // Latent attention (DeepSeek) has no k_proj: its q/k features need the latent norms between
    // the projections, which no weight product here can express (see the mla-latent attack).
    for (QkFeat f : {QkFeat::Dot, QkFeat::QNorm, QkFeat::KNorm}) {
      if (c.mla()) break;
      const char* nm = f == QkFeat::Dot ? "emb.qk/" : f == QkFeat::QNorm ? "emb.q/" : "emb.k/";
      pairs.push_back({nm + ls,
                       [&, Pp, Op, f](bool o, bool noisy, const std::vector<int32_t>* rows) {
                         const LayerWeights& P = *Pp;
                         const LayerWeights& O = *Op;
                         if (o) {
                           Tensor X = rows_of(obf.embed, rows);
                           return qk_features(linalg::matmul(X, O.wq, false, true), linalg::matmul(X, O.wk, false, true), m, mkv, dh, f);
                         }
                         Tensor X = scale_cols(rows_of(noisy ? E_sim : plain.embed, rows), P.attn_norm);
                         return qk_features(linalg::matmul(X, P.wq, false, true), linalg::matmul(X, P.wk, false, true), m, mkv, dh, f);
                       },
                       f != QkFeat::Dot, f != QkFeat::Dot});
    }
    pairs.push_back({"head.down/" + ls,
                     [&, Pp, Op](bool o, bool noisy, const std::vector<int32_t>*) {
                       if (o) return linalg::matmul(obf.head, Op->w_down);
                       return linalg::matmul(noisy ? Hf_sim : Hf, Pp->w_down);
                     },
                     true, true});
  }
  if (opt.emb_head_pair)
    pairs.push_back({"emb.head",
                     [&](bool o, bool noisy, const std::vector<int32_t>* rows) -> Tensor {
                       // Signature computed block by block below (n x n never held).
                       (void)o, (void)noisy, (void)rows;
                       return Tensor();
                     },
                     false, false});

  // Rows the attacker estimates noise on (a fixed sample of plaintext rows).
  const std::vector<int32_t> sim_rows = sample_ids(n, std::min<int64_t>(n, 1000), opt.sim_seed);

  // Signature of emb x head, streamed over row blocks.
  auto emb_head_sig = [&](bool o, bool noisy, const std::vector<int32_t>* rows) {
    const Tensor& A = o ? obf.embed : (noisy ? E_sim : plain.embed);
    const Tensor& B = o ? obf.head : (noisy ? Hf_sim : Hf);
    std::vector<int32_t> all;
    if (!rows) {
      all.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) all[size_t(i)] = int32_t(i);
      rows = &all;
    }
    Tensor sig({int64_t(rows->size()), opt.quantiles});
    constexpr size_t kBlock = 512;
    for (size_t r0 = 0; r0 < rows->size(); r0 += kBlock) {
      std::vector<int32_t> blk(rows->begin() + long(r0), rows->begin() + long(std::min(rows->size(), r0 + kBlock)));
      Tensor s2 = detail::sorted_row_signature(linalg::matmul(gather_rows(A, blk), B, false, true), opt.quantiles);
      std::copy(s2.data.begin(), s2.data.end(), sig.ptr() + int64_t(r0) * opt.quantiles);
    }
    return sig;
  };

  std::vector<Tensor> plain_sigs, obf_sigs;
  std::vector<double> weights;
  nlohmann::json pj = nlohmann::json::array();
  std::vector<std::string> used;
  for (const auto& p : pairs) {
    if (opt.budget_seconds > 0 && seconds_since(t0) > opt.budget_seconds) {
      pj.push_back({{"pair", p.name}, {"skipped", "time budget"}});
      continue;
    }
    const auto tp = std::chrono::steady_clock::now();
    Tensor sp, so, sn;  // plain (all rows), obf (query rows), plain noisy (sim rows)
    Tensor sp_sim;      // plain clean on sim rows
    if (p.name == "emb.head") {
      sp = emb_head_sig(false, false, nullptr);
      so = emb_head_sig(true, false, &query.obf_ids);
      sn = emb_head_sig(false, true, &sim_rows);
      sp_sim = gather_rows(sp, sim_rows);
    } else {
      Tensor fp = p.features(false, false, nullptr);
      Tensor fo = p.features(true, false, nullptr);
      Tensor fn = p.features(false, true, nullptr);
      if (p.normalize) {
        detail::normalize_columns(fp);
        detail::normalize_columns(fo);
        detail::normalize_columns(fn);
      }
      sp = detail::sorted_row_signature(fp, opt.quantiles);
      so = detail::sorted_row_signature(gather_rows(fo, query.obf_ids), opt.quantiles);
      sn = detail::sorted_row_signature(gather_rows(fn, sim_rows), opt.quantiles);
      sp_sim = gather_rows(sp, sim_rows);
    }
    // Noise variance of this pair's signature, and the typical distance between tokens.
    double v = 0, spread = 0;
    for (size_t i = 0; i < sim_rows.size(); ++i)
      for (int j = 0; j < opt.quantiles; ++j) {
        const double dv = sn.at(int64_t(i), j) - sp_sim.at(int64_t(i), j);
        v += dv * dv;
        const size_t i2 = (i + 1) % sim_rows.size();
        const double ds = sp_sim.at(int64_t(i), j) - sp_sim.at(int64_t(i2), j);
        spread += ds * ds;
      }
    v /= double(sim_rows.size());
    spread /= double(sim_rows.size());
    const double w = 1.0 / (v + 1e-4 * spread + 1e-12);
    pj.push_back({{"pair", p.name}, {"noise_var", v}, {"spread", spread}, {"weight", w},
                  {"seconds", seconds_since(tp)}});
    plain_sigs.push_back(std::move(sp));
    obf_sigs.push_back(std::move(so));
    weights.push_back(w);
    used.push_back(p.name);
  }
  require(!plain_sigs.empty(), "VMA", "the time budget ran out before the first weight pair");

  VocabAttack out;
  out.attack = "VMA";
  if (opt.per_pair_scores)
    for (size_t i = 0; i < used.size(); ++i)
      out.parts.emplace_back(used[i], guesses_from(n, query.obf_ids, obf_sigs[i], plain_sigs[i], opt.topk));
  // Votes across pairs and layers: weighted sum of squared signature distances.
  double wsum = 0;
  for (double w : weights) wsum += w;
  std::vector<double> wn;
  for (double w : weights) wn.push_back(w / wsum);
  out.guesses = guesses_from(n, query.obf_ids, hcat(obf_sigs, wn), hcat(plain_sigs, wn), opt.topk);
  out.details = {{"pairs", pj}, {"quantiles", opt.quantiles}, {"queried_ids", int64_t(query.obf_ids.size())}};
  out.seconds = seconds_since(t0);
  return out;
}

}  // namespace aloepri::audit
