// The reference forward pass (see forward.h). Activations live in double; matrices are kept as
// double copies of the f32 weights, transposed to [in, out], so that whole-sequence products run
// as dgemm (every dot product accumulated in double). The model is processed in chunks of
// positions: each chunk runs through all layers, appending to the KV cache, so a chunk is exactly
// a batch of step() calls and memory stays bounded for long sequences. The two sublayers are
// written once (attention_sublayer, ffn_sublayer) and read their matrices through a projection
// callback: ReferenceModel's resident f64 copies, or LayerForward's one-matrix-at-a-time
// conversion of an HF-layout layer.
#include "aloepri/engine/forward.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"

namespace aloepri {

namespace {

std::vector<double> to_double(const Tensor& t) { return std::vector<double>(t.data.begin(), t.data.end()); }

// An HF-layout matrix [out, in] as f64 [in, out] (the orientation the products use); empty stays empty.
void to_double_t(const Tensor& t, std::vector<double>& out) {
  if (t.data.empty()) {
    out.clear();
    return;
  }
  const int64_t r = t.rows(), c = t.cols();
  out.resize(size_t(r * c));
  // Blocked so neither side strides through memory one element per cache line.
  const int64_t B = 64;
  for (int64_t i0 = 0; i0 < r; i0 += B)
    for (int64_t j0 = 0; j0 < c; j0 += B)
      for (int64_t i = i0; i < std::min(r, i0 + B); ++i)
        for (int64_t j = j0; j < std::min(c, j0 + B); ++j) out[size_t(j * r + i)] = double(t.data[size_t(i * c + j)]);
}
std::vector<double> to_double_t(const Tensor& t) {
  std::vector<double> out;
  to_double_t(t, out);
  return out;
}

// C[M,N] = A[M,K] B[K,N] (row-major, contiguous).
void matmul(const double* A, int64_t M, int64_t K, const double* B, int64_t N, double* C) {
  linalg::gemm(false, false, M, N, K, 1.0, A, K, B, N, 0.0, C, N);
}

void add_bias(double* X, int64_t rows, const std::vector<double>& b) {
  if (b.empty()) return;
  const int64_t n = int64_t(b.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) X[r * n + i] += b[i];
}

// HF RMSNorm: x * rsqrt(mean(x^2) + eps) * w, per row of length n (computed in double).
void rms_norm(const double* X, int64_t rows, int64_t n, const std::vector<double>& w, double eps,
              double* Y) {
  for (int64_t r = 0; r < rows; ++r) {
    const double* x = X + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const double inv = 1.0 / std::sqrt(ss / double(n) + eps);
    double* y = Y + r * n;
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * w[i];
  }
}

void check_shape(const Tensor& t, const std::vector<int64_t>& want, const std::string& name) {
  require(t.shape == want, "weights: " + name,
          "shape " + shape_to_string(t.shape) + ", expected " + shape_to_string(want));
  require(int64_t(t.data.size()) == t.numel(), "weights: " + name, "data size does not match shape");
}

}  // namespace

std::vector<int64_t> attention_windows(const ModelConfig& c) {
  std::vector<int64_t> w(size_t(std::max<int64_t>(c.num_hidden_layers, 0)), 0);
  const nlohmann::json& raw = c.raw;
  if (!raw.is_object()) return w;
  auto window = [&]() -> int64_t {
    auto it = raw.find("sliding_window");
    if (it == raw.end() || !it->is_number_integer()) return 0;
    return std::max<int64_t>(it->get<int64_t>(), 0);
  };
  if (c.family == Family::Mistral) {
    std::fill(w.begin(), w.end(), window());
  } else if (c.family == Family::Qwen2 || c.family == Family::Qwen3 || c.family == Family::Qwen3Moe) {
    auto use = raw.find("use_sliding_window");
    if (use != raw.end() && use->is_boolean() && use->get<bool>()) {
      int64_t first = 0;
      auto mwl = raw.find("max_window_layers");
      if (mwl != raw.end() && mwl->is_number_integer()) first = mwl->get<int64_t>();
      for (int64_t l = std::max<int64_t>(first, 0); l < int64_t(w.size()); ++l) w[l] = window();
    }
  }
  return w;
}

std::vector<std::pair<int64_t, double>> route_token(const double* logits, int64_t E, int64_t k, bool norm) {
  require(k > 0 && k <= E, "router", "top-k " + std::to_string(k) + " of " + std::to_string(E) + " experts");
  double mx = logits[0];
  for (int64_t e = 1; e < E; ++e) mx = std::max(mx, logits[e]);
  std::vector<double> p(static_cast<size_t>(E));
  double z = 0;
  for (int64_t e = 0; e < E; ++e) z += (p[e] = std::exp(logits[e] - mx));
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  std::vector<std::pair<int64_t, double>> out;
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    out.push_back({order[i], p[order[i]] / z});
    sum += p[order[i]] / z;
  }
  if (norm)
    for (auto& [e, w] : out) w /= sum;
  return out;
}

std::vector<std::pair<int64_t, double>> route_token_deepseek(const ModelConfig& c, const double* logits,
                                                             const double* bias) {
  const int64_t E = c.num_experts, k = c.num_experts_per_tok;
  require(k > 0 && k <= E, "router", "top-k " + std::to_string(k) + " of " + std::to_string(E) + " experts");
  std::vector<double> score(static_cast<size_t>(E));
  if (c.scoring_func == "sigmoid") {
    for (int64_t e = 0; e < E; ++e) score[e] = 1.0 / (1.0 + std::exp(-logits[e]));
  } else {
    double mx = logits[0], z = 0;
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, logits[e]);
    for (int64_t e = 0; e < E; ++e) z += (score[e] = std::exp(logits[e] - mx));
    for (double& x : score) x /= z;
  }
  std::vector<double> choice = score;
  if (c.topk_method == "noaux_tc" && bias)
    for (int64_t e = 0; e < E; ++e) choice[e] += bias[e];
  if (c.topk_method != "greedy" && c.n_group > 1) {
    // Keep the topk_group best groups; the others' experts cannot be chosen.
    const int64_t G = c.n_group, per = E / G;
    std::vector<double> gscore(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) {
      std::vector<double> v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      std::sort(v.begin(), v.end(), std::greater<>());
      gscore[g] = c.topk_method == "noaux_tc" ? v[0] + (per > 1 ? v[1] : 0.0) : v[0];
    }
    std::vector<int64_t> gorder(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) gorder[g] = g;
    std::stable_sort(gorder.begin(), gorder.end(), [&](int64_t a, int64_t b) { return gscore[a] > gscore[b]; });
    for (int64_t i = c.topk_group; i < G; ++i)
      for (int64_t e = gorder[i] * per; e < (gorder[i] + 1) * per; ++e) choice[e] = -std::numeric_limits<double>::infinity();
  }
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
  std::vector<std::pair<int64_t, double>> out;
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    out.push_back({order[i], score[order[i]]});
    sum += score[order[i]];
  }
  // transformers divides by (sum + 1e-20) for noaux_tc; the difference is far below f64 noise here.
  for (auto& [e, w] : out) w = (c.norm_topk_prob ? w / sum : w) * c.routed_scaling_factor;
  return out;
}

namespace {

// A layer's vectors in f64 (norm gains, biases); its matrices are reached through a Project.
struct LayerVecs {
  std::vector<double> attn_norm, ffn_norm, bq, bk, bv, bo, q_norm, k_norm;
  std::vector<double> q_a_norm, kv_a_norm, router_bias;  // DeepSeek
};

LayerVecs layer_vecs(const LayerWeights& L) {
  return {to_double(L.attn_norm), to_double(L.ffn_norm),  to_double(L.bq),          to_double(L.bk),
          to_double(L.bv),        to_double(L.bo),        to_double(L.q_norm),      to_double(L.k_norm),
          to_double(L.q_a_norm),  to_double(L.kv_a_norm), to_double(L.router_bias)};
}

// QA/QB/KvA/KvB: DeepSeek's latent projections; ShGate/ShUp/ShDown: its shared experts.
enum class Proj { Q, K, V, O, Gate, Up, Down, Router, QA, QB, KvA, KvB, ShGate, ShUp, ShDown };
// Y [T, out] = X [T, in] W for matrix `p` of the layer (of expert `e` for Gate/Up/Down in a
// sparse layer, e = -1 otherwise).
using Project = std::function<void(Proj p, int64_t e, const double* X, int64_t T, double* Y)>;

// Activation buffers, kept across layers and calls so that a step does not reallocate them.
struct Scratch {
  std::vector<double> Xn, Q, K, V, A, G, U, S;
};

template <class V>
double* sized(V& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}

// Row r attends to the cached prefix (positions 0 .. pos-1, within the window) and to its own
// key/value at position pos, as if it were the only token fed after the prefix. H query heads of
// dk (scores) and dv (values) dims, query head h reading kv head h / g; Q, K, V, kc, vc, A are
// row-major with row strides qs, ks, vs, ks, vs, as (the dense layer: dk = dv = head_dim; MLA:
// g = 1 and the decompressed keys and values). Scores are Q K^T * scale.
struct BranchShape {
  int64_t H, g, dk, dv, qs, ks, vs, as;
  double scale;
};
void branch_attention(const BranchShape& b, int64_t pos, const double* Q, const double* K, const double* V,
                      int64_t T, const std::vector<double>& kc, const std::vector<double>& vc, int64_t win,
                      double* A) {
  const int64_t dk = b.dk, dv = b.dv;
  const double scale = b.scale;
  const int64_t lo = win > 0 ? std::max<int64_t>(0, pos - win + 1) : 0;  // first visible cached key
  const int64_t keys = pos;
  std::vector<double> S(size_t(T * std::max<int64_t>(keys, 1)));
  for (int64_t h = 0; h < b.H; ++h) {
    const int64_t kh = h / b.g;
    if (keys > 0)  // S [T, keys] = Q_h K_cache_h^T * scale
      linalg::gemm(false, true, T, keys, dk, scale, Q + h * dk, b.qs, kc.data() + kh * dk, b.ks, 0.0, S.data(), keys);
    for (int64_t r = 0; r < T; ++r) {
      const double* q = Q + r * b.qs + h * dk;
      const double* k = K + r * b.ks + kh * dk;
      const double* v = V + r * b.vs + kh * dv;
      double self = 0;
      for (int64_t i = 0; i < dk; ++i) self += q[i] * k[i];
      self *= scale;
      double* s = S.data() + r * keys;
      double mx = self;
      for (int64_t j = lo; j < keys; ++j) mx = std::max(mx, s[j]);
      const double ps = std::exp(self - mx);
      double sum = ps;
      for (int64_t j = lo; j < keys; ++j) sum += (s[j] = std::exp(s[j] - mx));
      double* a = A + r * b.as + h * dv;
      for (int64_t i = 0; i < dv; ++i) a[i] = ps * v[i];
      for (int64_t j = lo; j < keys; ++j) {
        const double* vj = vc.data() + j * b.vs + kh * dv;
        for (int64_t i = 0; i < dv; ++i) a[i] += s[j] * vj[i];
      }
      for (int64_t i = 0; i < dv; ++i) a[i] /= sum;
    }
  }
}

// The attention sublayer on the residual rows X [T, d] at positions pos .. pos+T-1 (branch: every
// row an alternative at position pos, the cache left unchanged): Out [T, d] = o_proj(attention(
// rms_norm(X))) + bo. Keys and values are appended to kc / vc unless branch. cosv / sinv: the
// RoPE angles of the rows, [T, dh/2].
void attention_sublayer(const ModelConfig& c, const LayerVecs& D, const Project& proj, const double* X, int64_t T,
                        int64_t pos, bool branch, const std::vector<double>& cosv, const std::vector<double>& sinv,
                        int64_t win, std::vector<double>& kc, std::vector<double>& vc, Scratch& sc, double* Out) {
  const int64_t d = c.hidden_size, dh = c.head_dim, H = c.num_attention_heads, g = c.group_size();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), half = dh / 2;
  const double eps = c.rms_norm_eps, scale = 1.0 / std::sqrt(double(dh));
  double* Xn = sized(sc.Xn, T * d);
  double* Q = sized(sc.Q, T * qd);
  double* K = sized(sc.K, T * kvd);
  double* V = sized(sc.V, T * kvd);
  double* A = sized(sc.A, T * qd);
  // rotate_half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on the pairs (i, i + dh/2).
  auto rope = [&](double* M, int64_t heads, int64_t stride) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        double* x = M + t * stride + h * dh;
        for (int64_t i = 0; i < half; ++i) {
          const double cs = cosv[t * half + i], sn = sinv[t * half + i];
          const double x1 = x[i], x2 = x[i + half];
          x[i] = x1 * cs - x2 * sn;
          x[i + half] = x2 * cs + x1 * sn;
        }
      }
  };
  const int64_t kRowBlock = 256;  // query rows per score block (bounds S to 256 x L)

  rms_norm(X, T, d, D.attn_norm, eps, Xn);
  proj(Proj::Q, -1, Xn, T, Q);
  proj(Proj::K, -1, Xn, T, K);
  proj(Proj::V, -1, Xn, T, V);
  add_bias(Q, T, D.bq);
  add_bias(K, T, D.bk);
  add_bias(V, T, D.bv);
  if (c.qk_norm) {  // Qwen3: RMSNorm over each head's vector, before RoPE
    rms_norm(Q, T * H, dh, D.q_norm, eps, Q);
    rms_norm(K, T * c.num_key_value_heads, dh, D.k_norm, eps, K);
  }
  rope(Q, H, qd);
  rope(K, c.num_key_value_heads, kvd);
  if (branch) {
    branch_attention({H, g, dh, dh, qd, kvd, kvd, qd, scale}, pos, Q, K, V, T, kc, vc, win, A);
  } else {
    kc.insert(kc.end(), K, K + T * kvd);
    vc.insert(vc.end(), V, V + T * kvd);
  }

  for (int64_t t0 = 0; t0 < (branch ? 0 : T); t0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, T - t0);
    const int64_t keys = pos + t0 + rows;  // causal: later keys are masked anyway
    double* S = sized(sc.S, rows * keys);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / g;  // GQA: query head h reads kv head h / g
      linalg::gemm(false, true, rows, keys, dh, scale, Q + t0 * qd + h * dh, qd, kc.data() + kh * dh, kvd, 0.0, S,
                   keys);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t qpos = pos + t0 + r;
        double* s = S + r * keys;
        const int64_t lo = win > 0 ? std::max<int64_t>(0, qpos - win + 1) : 0;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = lo; j <= qpos; ++j) mx = std::max(mx, s[j]);
        double sum = 0;
        for (int64_t j = 0; j < keys; ++j) {
          if (j < lo || j > qpos) {
            s[j] = 0;
          } else {
            s[j] = std::exp(s[j] - mx);
            sum += s[j];
          }
        }
        for (int64_t j = lo; j <= qpos; ++j) s[j] /= sum;
      }
      linalg::gemm(false, false, rows, dh, keys, 1.0, S, keys, vc.data() + kh * dh, kvd, 0.0, A + t0 * qd + h * dh,
                   qd);
    }
  }
  proj(Proj::O, -1, A, T, Out);
  add_bias(Out, T, D.bo);
}

// DeepSeek multi-head latent attention on the residual rows X [T, d] at positions pos ..
// pos+T-1: the decompressed (MHA) form, HF semantics. Per head h the query is [q_nope_h | q_pe_h]
// and the key [k_nope_h | k_pe] with one k_pe shared by every head; RoPE rotates adjacent pairs
// (2i, 2i+1) of the rope parts (HF de-interleaves first, which gives the same scores). The cache
// holds the decompressed keys [H*dh] and values [H*v] per position. cosv / sinv: [T, rope/2].
// branch: every row an alternative at position pos (the cache left unchanged), as in
// attention_sublayer.
void mla_attention_sublayer(const ModelConfig& c, const LayerVecs& D, const Project& proj, const double* X,
                            int64_t T, int64_t pos, bool branch, const std::vector<double>& cosv,
                            const std::vector<double>& sinv, std::vector<double>& kc, std::vector<double>& vc,
                            Scratch& sc, double* Out) {
  const int64_t d = c.hidden_size, H = c.num_attention_heads, dh = c.head_dim, nope = c.qk_nope_head_dim;
  const int64_t rope = c.qk_rope_head_dim, dv = c.v_head_dim, ql = c.q_lora_rank, kvl = c.kv_lora_rank;
  const int64_t qd = H * dh, vd = H * dv, kva = kvl + rope, kvb = H * (nope + dv), half = rope / 2;
  // yarn: DeepSeek multiplies the softmax scale by mscale(factor, mscale_all_dim)^2.
  const double eps = c.rms_norm_eps, scale = attention_score_factor(c) / std::sqrt(double(dh));
  double* Xn = sized(sc.Xn, T * d);
  double* Q = sized(sc.Q, T * qd);
  double* K = sized(sc.K, T * qd);
  double* V = sized(sc.V, T * vd);
  double* A = sized(sc.A, T * vd);
  rms_norm(X, T, d, D.attn_norm, eps, Xn);
  if (ql > 0) {
    std::vector<double> CQ(size_t(T * ql));
    proj(Proj::QA, -1, Xn, T, CQ.data());
    rms_norm(CQ.data(), T, ql, D.q_a_norm, eps, CQ.data());
    proj(Proj::QB, -1, CQ.data(), T, Q);
  } else {
    proj(Proj::Q, -1, Xn, T, Q);
  }
  std::vector<double> KVA(size_t(T * kva)), C(size_t(T * kvl)), KV(size_t(T * kvb));
  proj(Proj::KvA, -1, Xn, T, KVA.data());
  for (int64_t t = 0; t < T; ++t) std::copy_n(KVA.data() + t * kva, kvl, C.data() + t * kvl);
  rms_norm(C.data(), T, kvl, D.kv_a_norm, eps, C.data());
  proj(Proj::KvB, -1, C.data(), T, KV.data());
  auto rot = [&](double* x, int64_t t) {  // adjacent pairs of one rope part
    for (int64_t i = 0; i < half; ++i) {
      const double cs = cosv[t * half + i], sn = sinv[t * half + i];
      const double x1 = x[2 * i], x2 = x[2 * i + 1];
      x[2 * i] = x1 * cs - x2 * sn;
      x[2 * i + 1] = x2 * cs + x1 * sn;
    }
  };
  for (int64_t t = 0; t < T; ++t) {
    double* kpe = KVA.data() + t * kva + kvl;
    rot(kpe, t);
    for (int64_t h = 0; h < H; ++h) {
      rot(Q + t * qd + h * dh + nope, t);
      const double* kv = KV.data() + t * kvb + h * (nope + dv);
      std::copy_n(kv, nope, K + t * qd + h * dh);
      std::copy_n(kpe, rope, K + t * qd + h * dh + nope);
      std::copy_n(kv + nope, dv, V + t * vd + h * dv);
    }
  }
  if (branch) {  // row r sees the cached prefix and its own key only
    branch_attention({H, 1, dh, dv, qd, qd, vd, vd, scale}, pos, Q, K, V, T, kc, vc, 0, A);
    proj(Proj::O, -1, A, T, Out);
    return;
  }
  kc.insert(kc.end(), K, K + T * qd);
  vc.insert(vc.end(), V, V + T * vd);
  const int64_t keys = pos + T;
  double* S = sized(sc.S, T * keys);
  for (int64_t h = 0; h < H; ++h) {
    linalg::gemm(false, true, T, keys, dh, scale, Q + h * dh, qd, kc.data() + h * dh, qd, 0.0, S, keys);
    for (int64_t r = 0; r < T; ++r) {
      const int64_t qpos = pos + r;
      double* s = S + r * keys;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j <= qpos; ++j) mx = std::max(mx, s[j]);
      double sum = 0;
      for (int64_t j = 0; j < keys; ++j) sum += (s[j] = j > qpos ? 0.0 : std::exp(s[j] - mx));
      for (int64_t j = 0; j <= qpos; ++j) s[j] /= sum;
    }
    linalg::gemm(false, false, T, dv, keys, 1.0, S, keys, vc.data() + h * dv, vd, 0.0, A + h * dv, vd);
  }
  proj(Proj::O, -1, A, T, Out);
}

// Y [T, d] = sum over each row's top-k experts of weight * down(silu(gate(x)) * up(x)); each
// expert runs once on the rows routed to it (gathered, so its products stay dgemm).
void moe_ffn(const ModelConfig& c, int64_t layer, const LayerVecs& D, const Project& proj, const double* Xn,
             int64_t T, const RouterHook* hook, double* Y) {
  const int64_t d = c.hidden_size, E = c.num_experts, fe = c.moe_intermediate_size;
  std::vector<double> logits(size_t(T * E));
  proj(Proj::Router, -1, Xn, T, logits.data());  // [T, E]
  std::vector<std::vector<std::pair<int64_t, double>>> rows(static_cast<size_t>(E));  // expert -> (row, weight)
  for (int64_t t = 0; t < T; ++t) {
    const auto route =
        c.mla() ? route_token_deepseek(c, logits.data() + t * E, D.router_bias.empty() ? nullptr : D.router_bias.data())
                : route_token(logits.data() + t * E, E, c.num_experts_per_tok, c.norm_topk_prob);
    if (hook && *hook) (*hook)(layer, t, route);
    for (const auto& [e, w] : route) rows[size_t(e)].push_back({t, w});
  }
  std::fill(Y, Y + T * d, 0.0);
  std::vector<double> Xs, G, U, O;
  for (int64_t e = 0; e < E; ++e) {
    const auto& r = rows[size_t(e)];
    const int64_t m = int64_t(r.size());
    if (m == 0) continue;
    Xs.resize(size_t(m * d));
    for (int64_t i = 0; i < m; ++i) std::copy_n(Xn + r[i].first * d, d, Xs.data() + i * d);
    G.resize(size_t(m * fe));
    U.resize(size_t(m * fe));
    O.resize(size_t(m * d));
    proj(Proj::Gate, e, Xs.data(), m, G.data());
    proj(Proj::Up, e, Xs.data(), m, U.data());
    for (int64_t i = 0; i < m * fe; ++i) G[i] = G[i] / (1.0 + std::exp(-G[i])) * U[i];
    proj(Proj::Down, e, G.data(), m, O.data());
    for (int64_t i = 0; i < m; ++i) {
      double* y = Y + r[i].first * d;
      const double w = r[i].second;
      for (int64_t k = 0; k < d; ++k) y[k] += w * O[i * d + k];
    }
  }
  if (c.mla() && c.n_shared_experts > 0) {  // DeepSeek's shared experts see every row, unweighted
    const int64_t fs = c.moe_intermediate_size * c.n_shared_experts;
    G.resize(size_t(T * fs));
    U.resize(size_t(T * fs));
    O.resize(size_t(T * d));
    proj(Proj::ShGate, -1, Xn, T, G.data());
    proj(Proj::ShUp, -1, Xn, T, U.data());
    for (int64_t i = 0; i < T * fs; ++i) G[i] = G[i] / (1.0 + std::exp(-G[i])) * U[i];
    proj(Proj::ShDown, -1, G.data(), T, O.data());
    for (int64_t i = 0; i < T * d; ++i) Y[i] += O[i];
  }
}

// The FFN sublayer: Out [T, d] = down(silu(gate(x)) * up(x)) on x = rms_norm(X), or the routed
// sum of such experts in a sparse layer.
void ffn_sublayer(const ModelConfig& c, int64_t layer, const LayerVecs& D, const Project& proj, const double* X,
                  int64_t T, const RouterHook* hook, Scratch& sc, double* Out) {
  const int64_t d = c.hidden_size, ff = c.intermediate_size;
  double* Xn = sized(sc.Xn, T * d);
  rms_norm(X, T, d, D.ffn_norm, c.rms_norm_eps, Xn);
  if (c.is_moe_layer(layer)) {
    moe_ffn(c, layer, D, proj, Xn, T, hook, Out);
    return;
  }
  double* G = sized(sc.G, T * ff);
  double* U = sized(sc.U, T * ff);
  proj(Proj::Gate, -1, Xn, T, G);
  proj(Proj::Up, -1, Xn, T, U);
  for (int64_t i = 0; i < T * ff; ++i) G[i] = G[i] / (1.0 + std::exp(-G[i])) * U[i];
  proj(Proj::Down, -1, G, T, Out);
}

// RoPE angles [T, dh/2] of positions pos .. pos+T-1 (branch: all at pos); cos and sin times
// magnitude (yarn's, 1 otherwise).
void rope_angles(const std::vector<double>& inv_freq, double magnitude, int64_t pos, int64_t T, bool branch,
                 std::vector<double>& cosv, std::vector<double>& sinv) {
  const int64_t half = int64_t(inv_freq.size());
  cosv.resize(size_t(T * half));
  sinv.resize(size_t(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(branch ? pos : pos + t) * inv_freq[i];
      cosv[t * half + i] = magnitude * std::cos(a);
      sinv[t * half + i] = magnitude * std::sin(a);
    }
}

// The shapes every layer must have (HF layout), checked by ReferenceModel and LayerForward alike.
void check_layer(const ModelConfig& c, int64_t l, const LayerWeights& L, bool attention, bool ffn) {
  const int64_t d = c.hidden_size, dh = c.head_dim, ff = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  const std::string p = "layers." + std::to_string(l) + ".";
  if (attention && c.mla()) {
    const int64_t ql = c.q_lora_rank, kvl = c.kv_lora_rank, H = c.num_attention_heads;
    check_shape(L.attn_norm, {d}, p + "attn_norm");
    if (ql > 0) {
      check_shape(L.wq_a, {ql, d}, p + "wq_a");
      check_shape(L.q_a_norm, {ql}, p + "q_a_norm");
      check_shape(L.wq_b, {qd, ql}, p + "wq_b");
    } else {
      check_shape(L.wq, {qd, d}, p + "wq");
    }
    check_shape(L.wkv_a, {kvl + c.qk_rope_head_dim, d}, p + "wkv_a");
    check_shape(L.kv_a_norm, {kvl}, p + "kv_a_norm");
    check_shape(L.wkv_b, {H * (c.qk_nope_head_dim + c.v_head_dim), kvl}, p + "wkv_b");
    check_shape(L.wo, {d, c.v_dim()}, p + "wo");
  } else if (attention) {
    check_shape(L.attn_norm, {d}, p + "attn_norm");
    check_shape(L.wq, {qd, d}, p + "wq");
    check_shape(L.wk, {kvd, d}, p + "wk");
    check_shape(L.wv, {kvd, d}, p + "wv");
    check_shape(L.wo, {d, qd}, p + "wo");
    if (!L.bq.data.empty()) check_shape(L.bq, {qd}, p + "bq");
    if (!L.bk.data.empty()) check_shape(L.bk, {kvd}, p + "bk");
    if (!L.bv.data.empty()) check_shape(L.bv, {kvd}, p + "bv");
    if (!L.bo.data.empty()) check_shape(L.bo, {d}, p + "bo");
    if (c.qk_norm) {
      check_shape(L.q_norm, {dh}, p + "q_norm");
      check_shape(L.k_norm, {dh}, p + "k_norm");
    }
  }
  if (!ffn) return;
  check_shape(L.ffn_norm, {d}, p + "ffn_norm");
  if (c.is_moe_layer(l)) {
    const int64_t E = c.num_experts, fe = c.moe_intermediate_size;
    check_shape(L.router, {E, d}, p + "router");
    require(int64_t(L.experts.size()) == E, "weights: " + p + "experts",
            "has " + std::to_string(L.experts.size()) + " experts, config says " + std::to_string(E));
    for (int64_t e = 0; e < E; ++e) {
      const std::string pe = p + "experts." + std::to_string(e) + ".";
      check_shape(L.experts[e].w_gate, {fe, d}, pe + "w_gate");
      check_shape(L.experts[e].w_up, {fe, d}, pe + "w_up");
      check_shape(L.experts[e].w_down, {d, fe}, pe + "w_down");
    }
    if (c.router_bias()) check_shape(L.router_bias, {E}, p + "router_bias");
    if (c.mla() && c.n_shared_experts > 0) {
      const int64_t fs = fe * c.n_shared_experts;
      check_shape(L.shared.w_gate, {fs, d}, p + "shared.w_gate");
      check_shape(L.shared.w_up, {fs, d}, p + "shared.w_up");
      check_shape(L.shared.w_down, {d, fs}, p + "shared.w_down");
    }
  } else {
    check_shape(L.w_gate, {ff, d}, p + "w_gate");
    check_shape(L.w_up, {ff, d}, p + "w_up");
    check_shape(L.w_down, {d, ff}, p + "w_down");
  }
}

// The HF-layout matrix `p` (of expert e) of a layer.
const Tensor& layer_matrix(const LayerWeights& L, Proj p, int64_t e) {
  switch (p) {
    case Proj::Q: return L.wq;
    case Proj::K: return L.wk;
    case Proj::V: return L.wv;
    case Proj::O: return L.wo;
    case Proj::Router: return L.router;
    case Proj::Gate: return e < 0 ? L.w_gate : L.experts[size_t(e)].w_gate;
    case Proj::Up: return e < 0 ? L.w_up : L.experts[size_t(e)].w_up;
    case Proj::Down: return e < 0 ? L.w_down : L.experts[size_t(e)].w_down;
    case Proj::QA: return L.wq_a;
    case Proj::QB: return L.wq_b;
    case Proj::KvA: return L.wkv_a;
    case Proj::KvB: return L.wkv_b;
    case Proj::ShGate: return L.shared.w_gate;
    case Proj::ShUp: return L.shared.w_up;
    case Proj::ShDown: return L.shared.w_down;
  }
  throw Error("forward", "unknown projection");
}

}  // namespace

struct ReferenceModel::DoubleWeights {
  struct Expert {
    std::vector<double> w_gate, w_up, w_down;
  };
  struct Layer {
    LayerVecs vecs;
    std::vector<double> wq, wk, wv, wo, w_gate, w_up, w_down, router;  // [in, out]
    std::vector<double> wq_a, wq_b, wkv_a, wkv_b, sh_gate, sh_up, sh_down;  // DeepSeek
    std::vector<Expert> experts;  // sparse layers
  };
  std::vector<double> embed, final_norm, head;  // head [d, n]
  std::vector<Layer> layers;
};

ReferenceModel::ReferenceModel(ModelWeights w) : w_(std::move(w)) {
  const ModelConfig& c = w_.config;
  const int64_t d = c.hidden_size, n = c.vocab_size, dh = c.head_dim, ff = c.intermediate_size;
  require(d > 0 && n > 0 && dh > 0 && ff > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0,
          "config", "hidden_size, vocab_size, head_dim, intermediate_size and head counts must be positive");
  require(c.num_attention_heads % c.num_key_value_heads == 0, "config: num_key_value_heads",
          "must divide num_attention_heads");
  require(int64_t(w_.layers.size()) == c.num_hidden_layers, "weights",
          "have " + std::to_string(w_.layers.size()) + " layers, config says " +
              std::to_string(c.num_hidden_layers));

  check_shape(w_.embed, {n, d}, "embed");
  check_shape(w_.final_norm, {d}, "final_norm");
  if (w_.head.data.empty() && c.tie_word_embeddings) w_.head = w_.embed;
  check_shape(w_.head, {n, d}, "head");

  auto dw = std::make_shared<DoubleWeights>();
  dw->embed = to_double(w_.embed);
  dw->final_norm = to_double(w_.final_norm);
  dw->head = to_double_t(w_.head);
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    const LayerWeights& L = w_.layers[l];
    check_layer(c, int64_t(l), L, true, true);
    DoubleWeights::Layer D;
    D.vecs = layer_vecs(L);
    D.wq = to_double_t(L.wq);
    D.wk = to_double_t(L.wk);
    D.wv = to_double_t(L.wv);
    D.wo = to_double_t(L.wo);
    D.w_gate = to_double_t(L.w_gate);
    D.w_up = to_double_t(L.w_up);
    D.w_down = to_double_t(L.w_down);
    D.router = to_double_t(L.router);
    D.wq_a = to_double_t(L.wq_a);
    D.wq_b = to_double_t(L.wq_b);
    D.wkv_a = to_double_t(L.wkv_a);
    D.wkv_b = to_double_t(L.wkv_b);
    D.sh_gate = to_double_t(L.shared.w_gate);
    D.sh_up = to_double_t(L.shared.w_up);
    D.sh_down = to_double_t(L.shared.w_down);
    for (const ExpertWeights& e : L.experts)
      D.experts.push_back({to_double_t(e.w_gate), to_double_t(e.w_up), to_double_t(e.w_down)});
    dw->layers.push_back(std::move(D));
  }
  dw_ = std::move(dw);
  inv_freq_ = rope_inv_freq(c);
  window_ = attention_windows(c);
  reset();
}

void ReferenceModel::reset() {
  pos_ = 0;
  k_cache_.assign(w_.layers.size(), {});
  v_cache_.assign(w_.layers.size(), {});
}

int64_t ReferenceModel::argmax(const double* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;  // strict: ties keep the lowest id
  return best;
}

std::vector<double> ReferenceModel::run_layers(const int64_t* ids, int64_t T, bool branch) {
  const ModelConfig& c = w_.config;
  const DoubleWeights& W = *dw_;
  const int64_t d = c.hidden_size;

  std::vector<double> X(T * d), tmp(T * d);
  for (int64_t t = 0; t < T; ++t) std::copy_n(W.embed.data() + ids[t] * d, d, X.data() + t * d);
  std::vector<double> cosv, sinv;
  rope_angles(inv_freq_, rope_magnitude(c), pos_, T, branch, cosv, sinv);
  Scratch sc;
  for (size_t l = 0; l < W.layers.size(); ++l) {
    const auto& D = W.layers[l];
    const Project proj = [&D, d, &c](Proj p, int64_t e, const double* In, int64_t rows, double* Y) {
      const DoubleWeights::Expert* x = e >= 0 ? &D.experts[size_t(e)] : nullptr;
      const std::vector<double>* m = nullptr;
      switch (p) {
        case Proj::Q: m = &D.wq; break;
        case Proj::K: m = &D.wk; break;
        case Proj::V: m = &D.wv; break;
        case Proj::O: m = &D.wo; break;
        case Proj::Router: m = &D.router; break;
        case Proj::Gate: m = x ? &x->w_gate : &D.w_gate; break;
        case Proj::Up: m = x ? &x->w_up : &D.w_up; break;
        case Proj::Down: m = x ? &x->w_down : &D.w_down; break;
        case Proj::QA: m = &D.wq_a; break;
        case Proj::QB: m = &D.wq_b; break;
        case Proj::KvA: m = &D.wkv_a; break;
        case Proj::KvB: m = &D.wkv_b; break;
        case Proj::ShGate: m = &D.sh_gate; break;
        case Proj::ShUp: m = &D.sh_up; break;
        case Proj::ShDown: m = &D.sh_down; break;
      }
      // in x out, with in known from the projection: the residual side is d for all but the
      // latents' readers and the writers (O and the downs), whose output side is d.
      const int64_t in = p == Proj::QB ? c.q_lora_rank : p == Proj::KvB ? c.kv_lora_rank
                       : (p == Proj::O || p == Proj::Down || p == Proj::ShDown) ? int64_t(m->size()) / d : d;
      matmul(In, rows, in, m->data(), int64_t(m->size()) / in, Y);
    };
    const int64_t win = window_.empty() ? 0 : window_[l];
    if (c.mla()) {
      mla_attention_sublayer(c, D.vecs, proj, X.data(), T, pos_, branch, cosv, sinv, k_cache_[l], v_cache_[l], sc,
                             tmp.data());
    } else {
      attention_sublayer(c, D.vecs, proj, X.data(), T, pos_, branch, cosv, sinv, win, k_cache_[l], v_cache_[l], sc,
                         tmp.data());
    }
    for (int64_t i = 0; i < T * d; ++i) X[i] += tmp[i];
    ffn_sublayer(c, int64_t(l), D.vecs, proj, X.data(), T, &router_hook_, sc, tmp.data());
    for (int64_t i = 0; i < T * d; ++i) X[i] += tmp[i];
    if (hook_ && !branch) hook_(int64_t(l), X);
  }
  if (!branch) pos_ += T;
  std::vector<double> Xn(T * d);
  rms_norm(X.data(), T, d, W.final_norm, c.rms_norm_eps, Xn.data());
  return Xn;
}

LayerForward::LayerForward(const ModelConfig& c) : c_(c), inv_freq_(rope_inv_freq(c)), window_(attention_windows(c)) {
  require(c.hidden_size > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0 &&
              c.num_attention_heads % c.num_key_value_heads == 0,
          "config", "hidden_size and head counts must be positive, num_key_value_heads must divide num_attention_heads");
  require(!c.mla(), "config: " + family_name(c.family), "the one-layer forward (calibrated kappa) does not run MLA yet");
}

namespace {
// Products on an HF-layout layer: each matrix converted to f64 [in, out] only for its product
// (the buffer is reused), so the caller's layer is never held twice.
Project converting_project(const LayerWeights& L, std::vector<double>& buf) {
  return [&L, &buf](Proj p, int64_t e, const double* In, int64_t rows, double* Y) {
    const Tensor& W = layer_matrix(L, p, e);
    to_double_t(W, buf);
    matmul(In, rows, W.cols(), buf.data(), W.rows(), Y);
  };
}
}  // namespace

std::vector<double> LayerForward::attention(int64_t layer, const LayerWeights& L, const std::vector<double>& X) const {
  const int64_t d = c_.hidden_size;
  require(layer >= 0 && layer < c_.num_hidden_layers, "LayerForward", "layer " + std::to_string(layer) + " out of range");
  require(int64_t(X.size()) % d == 0, "LayerForward", "residual stream is not [T, hidden_size]");
  check_layer(c_, layer, L, true, false);
  const int64_t T = int64_t(X.size()) / d;
  std::vector<double> cosv, sinv, kc, vc, buf, out(X.size());
  rope_angles(inv_freq_, rope_magnitude(c_), 0, T, false, cosv, sinv);
  Scratch sc;
  const LayerVecs D = layer_vecs(L);
  attention_sublayer(c_, D, converting_project(L, buf), X.data(), T, 0, false, cosv, sinv,
                     window_.empty() ? 0 : window_[size_t(layer)], kc, vc, sc, out.data());
  return out;
}

std::vector<double> LayerForward::ffn(int64_t layer, const LayerWeights& L, const std::vector<double>& X) const {
  const int64_t d = c_.hidden_size;
  require(layer >= 0 && layer < c_.num_hidden_layers, "LayerForward", "layer " + std::to_string(layer) + " out of range");
  require(int64_t(X.size()) % d == 0, "LayerForward", "residual stream is not [T, hidden_size]");
  check_layer(c_, layer, L, false, true);
  const int64_t T = int64_t(X.size()) / d;
  std::vector<double> buf, out(X.size());
  Scratch sc;
  const LayerVecs D = layer_vecs(L);
  ffn_sublayer(c_, layer, D, converting_project(L, buf), X.data(), T, nullptr, sc, out.data());
  return out;
}

std::vector<double> ReferenceModel::branch_hidden(const std::vector<int64_t>& ids) {
  const int64_t n = w_.config.vocab_size, d = w_.config.hidden_size;
  for (int64_t id : ids)
    require(id >= 0 && id < n, "token id " + std::to_string(id),
            "out of range for vocab_size " + std::to_string(n), kExitUsage);
  std::vector<double> out(ids.size() * size_t(d));
  const int64_t chunk = 1024;  // bounds the activations ([chunk, ff] doubles per buffer)
  for (int64_t t0 = 0; t0 < int64_t(ids.size()); t0 += chunk) {
    const int64_t T = std::min<int64_t>(chunk, int64_t(ids.size()) - t0);
    std::vector<double> h = run_layers(ids.data() + t0, T, /*branch=*/true);
    std::copy(h.begin(), h.end(), out.begin() + t0 * d);
  }
  return out;
}

void ReferenceModel::forward_each(const std::vector<int64_t>& ids,
                                  const std::function<void(int64_t, const double*)>& on_logits) {
  const int64_t n = w_.config.vocab_size, d = w_.config.hidden_size;
  // Check every id before touching the cache, so a bad id leaves the model unchanged.
  for (int64_t id : ids)
    require(id >= 0 && id < n, "token id " + std::to_string(id),
            "out of range for vocab_size " + std::to_string(n), kExitUsage);
  // Chunk so one chunk's logits stay within ~128 MB of doubles.
  const int64_t chunk = std::clamp<int64_t>((int64_t(1) << 24) / n, 1, 256);
  std::vector<double> logits;
  for (int64_t t0 = 0; t0 < int64_t(ids.size()); t0 += chunk) {
    const int64_t T = std::min<int64_t>(chunk, int64_t(ids.size()) - t0);
    std::vector<double> h = run_layers(ids.data() + t0, T, /*branch=*/false);
    logits.resize(size_t(T * n));
    matmul(h.data(), T, d, dw_->head.data(), n, logits.data());
    for (int64_t t = 0; t < T; ++t) on_logits(t0 + t, logits.data() + t * n);
  }
}

std::vector<double> ReferenceModel::forward(const std::vector<int64_t>& ids) {
  const int64_t n = w_.config.vocab_size;
  std::vector<double> out(ids.size() * size_t(n));
  forward_each(ids, [&](int64_t t, const double* lg) { std::copy_n(lg, n, out.data() + t * n); });
  return out;
}

std::vector<double> ReferenceModel::prefill(const std::vector<int64_t>& ids) {
  require(!ids.empty(), "prefill", "empty token sequence", kExitUsage);
  const int64_t n = w_.config.vocab_size;
  std::vector<double> last(n);
  const int64_t T = int64_t(ids.size());
  forward_each(ids, [&](int64_t t, const double* lg) {
    if (t == T - 1) std::copy_n(lg, n, last.data());
  });
  return last;
}

std::vector<double> ReferenceModel::step(int64_t token_id) { return prefill({token_id}); }

std::vector<double> ReferenceModel::score(const std::vector<int64_t>& ids) {
  reset();
  const int64_t n = w_.config.vocab_size, T = int64_t(ids.size());
  std::vector<double> out(T > 1 ? T - 1 : 0);
  forward_each(ids, [&](int64_t t, const double* lg) {
    if (t + 1 >= T) return;
    double mx = lg[0];
    for (int64_t i = 1; i < n; ++i) mx = std::max(mx, lg[i]);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += std::exp(lg[i] - mx);
    out[t] = lg[ids[t + 1]] - mx - std::log(sum);
  });
  return out;
}

std::vector<int64_t> ReferenceModel::greedy(const std::vector<int64_t>& prompt, int64_t n) {
  reset();
  std::vector<int64_t> out;
  if (n <= 0) return out;
  std::vector<double> logits = prefill(prompt);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = argmax(logits.data(), int64_t(logits.size()));
    out.push_back(id);
    if (i + 1 < n) logits = step(id);
  }
  return out;
}

}  // namespace aloepri
