// Shared machinery of the weight attacks: loading, signatures, nearest-neighbour search,
// assignment, scoring.
#include <algorithm>
#include <array>
#include <tuple>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/model/model.h"
#include "weight_internal.h"

namespace aloepri::audit {

namespace {

ModelWeights load_view(const std::string& dir, bool routed_ok) {
  HFModel m(dir);
  const ModelConfig& c = m.config();
  // The weight attacks read each layer's dense FFN (Gate-IA, NN's channel alignment). A DeepSeek
  // sparse layer's shared experts are such an FFN: one MLP reading the normed residual through the
  // layer's Q, its channels permuted and scaled, writing through the experts' P. They stand in
  // for the layer's FFN (both models alike). Qwen3-MoE's sparse layers have no such MLP.
  const bool shared_view = c.mla() && (!c.is_moe() || c.n_shared_experts > 0);
  if (c.is_moe() && !shared_view && !routed_ok)
    throw Error(dir + "/config.json",
                "the weight attacks (vma, gate-ia, attn-ia, nn, oracle) read dense FFN layers; " + family_name(c.family) +
                    " sparse layers (router + experts, no shared expert) are not supported by them yet",
                kExitUsage);
  ModelWeights w = ModelWeights::load(m);
  for (auto& L : w.layers)
    if (L.w_gate.data.empty() && !L.shared.w_gate.data.empty()) {
      L.w_gate = L.shared.w_gate;
      L.w_up = L.shared.w_up;
      L.w_down = L.shared.w_down;
    }
  return w;
}

}  // namespace

ModelWeights load_weights(const std::string& dir) { return load_view(dir, false); }

std::pair<ModelWeights, ModelWeights> load_weight_pair(const std::string& plain_dir, const std::string& obf_dir) {
  ModelWeights p = load_view(plain_dir, true), o = load_view(obf_dir, true);
  if (p.config.is_moe() && !(p.config.mla() && p.config.n_shared_experts > 0)) pair_routed_experts(p, o);
  return {std::move(p), std::move(o)};
}

std::vector<std::vector<int64_t>> pair_routed_experts(ModelWeights& plain, ModelWeights& obf) {
  using namespace internal;
  require(plain.layers.size() == obf.layers.size() && plain.vocab() == obf.vocab(), "audit",
          "plaintext and obfuscated models do not match (layers or vocabulary)");
  std::vector<std::vector<int64_t>> out(plain.layers.size());
  for (size_t l = 0; l < plain.layers.size(); ++l) {
    LayerWeights& P = plain.layers[l];
    LayerWeights& O = obf.layers[l];
    if (P.experts.empty()) continue;
    const int64_t E = int64_t(P.experts.size()), n = plain.vocab();
    require(int64_t(O.experts.size()) == E, "audit", "layer " + std::to_string(l) + ": expert counts differ");
    Tensor Ap = linalg::matmul(scale_cols(plain.embed, P.ffn_norm), P.router, false, true);  // [n, E]
    Tensor Ao = linalg::matmul(obf.embed, O.router, false, true);                          // [n, E]
    // The rows of the obfuscated embedding are in the secret vocabulary order, so a column is
    // compared by its sorted values (its distribution over the vocabulary), as VMA does.
    constexpr int64_t kQuantiles = 512;
    auto quantiles = [&](const Tensor& A, int64_t col) {
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) v[size_t(t)] = A.ptr()[t * E + col];
      std::sort(v.begin(), v.end());
      std::vector<double> q(static_cast<size_t>(kQuantiles));
      for (int64_t i = 0; i < kQuantiles; ++i) q[size_t(i)] = v[size_t((2 * i + 1) * n / (2 * kQuantiles))];
      return q;
    };
    std::vector<std::vector<double>> qp, qo;
    for (int64_t e = 0; e < E; ++e) {
      qp.push_back(quantiles(Ap, e));
      qo.push_back(quantiles(Ao, e));
    }
    std::vector<std::tuple<double, int64_t, int64_t>> cost;  // (distance, slot, expert)
    for (int64_t s = 0; s < E; ++s)
      for (int64_t e = 0; e < E; ++e) {
        double dist = 0;
        for (int64_t i = 0; i < kQuantiles; ++i) dist += (qo[size_t(s)][size_t(i)] - qp[size_t(e)][size_t(i)]) *
                                                         (qo[size_t(s)][size_t(i)] - qp[size_t(e)][size_t(i)]);
        cost.emplace_back(dist, s, e);
      }
    std::sort(cost.begin(), cost.end());
    std::vector<int64_t> slot(size_t(E), -1);
    std::vector<bool> taken(size_t(E), false);
    for (const auto& [dist, s, e] : cost)
      if (slot[size_t(e)] < 0 && !taken[size_t(s)]) {
        slot[size_t(e)] = s;
        taken[size_t(s)] = true;
      }
    // All experts side by side, in plaintext expert order on both sides: one FFN of E x fe
    // channels (a single expert has fewer channels than d, too few for NN's least squares).
    auto stack = [&](const LayerWeights& L, const std::vector<int64_t>& order) {
      const int64_t fe = L.experts[0].w_gate.rows(), d = L.experts[0].w_gate.cols();
      Tensor g({E * fe, d}), u({E * fe, d}), dn({d, E * fe});
      for (int64_t i = 0; i < E; ++i) {
        const ExpertWeights& X = L.experts[size_t(order[size_t(i)])];
        std::copy(X.w_gate.data.begin(), X.w_gate.data.end(), g.data.begin() + i * fe * d);
        std::copy(X.w_up.data.begin(), X.w_up.data.end(), u.data.begin() + i * fe * d);
        for (int64_t r = 0; r < d; ++r)
          std::copy_n(X.w_down.data.begin() + r * fe, fe, dn.data.begin() + r * E * fe + i * fe);
      }
      return std::array<Tensor, 3>{std::move(g), std::move(u), std::move(dn)};
    };
    std::vector<int64_t> ident(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) ident[size_t(e)] = e;
    auto sp = stack(P, ident), so = stack(O, slot);
    P.w_gate = std::move(sp[0]);
    P.w_up = std::move(sp[1]);
    P.w_down = std::move(sp[2]);
    O.w_gate = std::move(so[0]);
    O.w_up = std::move(so[1]);
    O.w_down = std::move(so[2]);
    out[l] = std::move(slot);
  }
  return out;
}

namespace internal {

Tensor scale_cols(const Tensor& A, const Tensor& w) {
  Tensor B = A;
  const int64_t c = A.cols();
  require(int64_t(w.data.size()) == c, "audit", "norm weight size mismatch");
  for (int64_t r = 0; r < A.rows(); ++r)
    for (int64_t j = 0; j < c; ++j) B.ptr()[r * c + j] *= w.data[size_t(j)];
  return B;
}

Tensor gather_rows(const Tensor& A, const std::vector<int32_t>& rows) {
  const int64_t c = A.cols();
  Tensor B({int64_t(rows.size()), c});
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy(A.ptr() + int64_t(rows[i]) * c, A.ptr() + (int64_t(rows[i]) + 1) * c, B.ptr() + int64_t(i) * c);
  return B;
}

Tensor hcat(const std::vector<Tensor>& parts, const std::vector<double>& weights) {
  require(!parts.empty(), "audit", "nothing to concatenate");
  const int64_t r = parts[0].rows();
  int64_t c = 0;
  for (const auto& p : parts) {
    require(p.rows() == r, "audit", "row counts differ");
    c += p.cols();
  }
  Tensor out({r, c});
  int64_t off = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const float s = float(std::sqrt(weights.empty() ? 1.0 : weights[i]));
    const int64_t pc = parts[i].cols();
    for (int64_t row = 0; row < r; ++row)
      for (int64_t j = 0; j < pc; ++j) out.ptr()[row * c + off + j] = s * parts[i].ptr()[row * pc + j];
    off += pc;
  }
  return out;
}

double global_std(const Tensor& A) {
  double s = 0, s2 = 0;
  const double n = double(A.numel());
  for (float x : A.data) s += x;
  const double mean = s / n;
  for (float x : A.data) s2 += (x - mean) * (x - mean);
  return std::sqrt(s2 / n);
}

Tensor add_noise(const Tensor& A, double alpha, bool per_row, RngStream& rng) {
  Tensor B = A;
  if (alpha == 0) return B;
  const double g = global_std(A);
  const int64_t c = A.cols();
  std::vector<float> z(static_cast<size_t>(c));
  for (int64_t r = 0; r < A.rows(); ++r) {
    double sigma = g;
    if (per_row) {
      double s = 0, s2 = 0;
      for (int64_t j = 0; j < c; ++j) s += A.ptr()[r * c + j];
      const double m = s / double(c);
      for (int64_t j = 0; j < c; ++j) s2 += (A.ptr()[r * c + j] - m) * (A.ptr()[r * c + j] - m);
      sigma = std::sqrt(s2 / double(c));
    }
    rng.fill_normal(z.data(), z.size(), alpha * sigma);
    for (int64_t j = 0; j < c; ++j) B.ptr()[r * c + j] += z[size_t(j)];
  }
  return B;
}

void column_stats(const Tensor& A, std::vector<double>& mean, std::vector<double>& sd) {
  const int64_t r = A.rows(), c = A.cols();
  mean.assign(size_t(c), 0.0);
  sd.assign(size_t(c), 0.0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) mean[size_t(j)] += A.ptr()[i * c + j];
  for (auto& m : mean) m /= double(std::max<int64_t>(r, 1));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const double dv = A.ptr()[i * c + j] - mean[size_t(j)];
      sd[size_t(j)] += dv * dv;
    }
  for (auto& s : sd) s = std::sqrt(s / double(std::max<int64_t>(r, 1)));
}

void standardize(Tensor& A, const std::vector<double>& mean, const std::vector<double>& sd) {
  const int64_t c = A.cols();
  for (int64_t i = 0; i < A.rows(); ++i)
    for (int64_t j = 0; j < c; ++j) {
      const double s = sd[size_t(j)] > 0 ? sd[size_t(j)] : 1.0;
      A.ptr()[i * c + j] = float((A.ptr()[i * c + j] - mean[size_t(j)]) / s);
    }
}

Guesses guesses_from(int64_t n, const std::vector<int32_t>& obf_ids, const Tensor& query_feats,
                     const Tensor& plain_feats, int k) {
  Guesses g(static_cast<size_t>(n));
  auto nn = detail::nearest_rows(query_feats, plain_feats, k);
  for (size_t i = 0; i < obf_ids.size(); ++i) g[size_t(obf_ids[i])] = std::move(nn[i]);
  return g;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double sq_dist(const float* a, const float* b, int64_t len) {
  double s = 0;
  for (int64_t i = 0; i < len; ++i) {
    const double x = double(a[i]) - b[i];
    s += x * x;
  }
  return s;
}

}  // namespace internal

namespace detail {

Tensor sorted_row_signature(const Tensor& m, int q) {
  require(q >= 2, "audit", "signature needs at least 2 quantiles");
  const int64_t rows = m.rows(), len = m.cols();
  Tensor out({rows, q});
  std::vector<float> buf(static_cast<size_t>(len));
  std::vector<int64_t> pos(static_cast<size_t>(q));
  for (int i = 0; i < q; ++i) pos[size_t(i)] = int64_t(std::llround(double(i) * double(len - 1) / double(q - 1)));
  const bool full_sort = len <= 4096;
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(m.ptr() + r * len, m.ptr() + (r + 1) * len, buf.begin());
    float* o = out.ptr() + r * q;
    if (full_sort) {
      std::sort(buf.begin(), buf.end());
      for (int i = 0; i < q; ++i) o[i] = buf[size_t(pos[size_t(i)])];
    } else {
      // Successive selections on the shrinking tail: O(len log q) instead of a full sort.
      auto first = buf.begin();
      for (int i = 0; i < q; ++i) {
        auto nth = buf.begin() + pos[size_t(i)];
        std::nth_element(first, nth, buf.end());
        o[i] = *nth;
        first = nth;
      }
    }
    double mean = 0;
    for (int i = 0; i < q; ++i) mean += o[i];
    mean /= q;
    double ss = 0;
    for (int i = 0; i < q; ++i) ss += (o[i] - mean) * (o[i] - mean);
    const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
    for (int i = 0; i < q; ++i) o[i] = float((o[i] - mean) * inv);
  }
  return out;
}

void normalize_columns(Tensor& m) {
  std::vector<double> mean, sd;
  internal::column_stats(m, mean, sd);
  const int64_t c = m.cols();
  for (int64_t i = 0; i < m.rows(); ++i)
    for (int64_t j = 0; j < c; ++j)
      if (sd[size_t(j)] > 0) m.ptr()[i * c + j] = float(m.ptr()[i * c + j] / sd[size_t(j)]);
}

std::vector<std::vector<int32_t>> nearest_rows(const Tensor& queries, const Tensor& base, int k) {
  require(queries.cols() == base.cols(), "audit", "feature sizes differ: " + queries.shape_str() + " vs " +
                                                      base.shape_str());
  const int64_t nq = queries.rows(), n = base.rows(), D = base.cols();
  k = int(std::min<int64_t>(k, n));
  std::vector<float> bn(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < D; ++j) s += double(base.ptr()[i * D + j]) * base.ptr()[i * D + j];
    bn[size_t(i)] = float(s);
  }
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(nq));
  constexpr int64_t kBlock = 256;
  std::vector<float> dot(static_cast<size_t>(std::min(nq, kBlock) * n));
  std::vector<int32_t> idx(static_cast<size_t>(n));
  for (int64_t q0 = 0; q0 < nq; q0 += kBlock) {
    const int64_t m = std::min(kBlock, nq - q0);
    linalg::gemm(false, true, m, n, D, 1.0f, queries.ptr() + q0 * D, D, base.ptr(), D, 0.0f, dot.data(), n);
    for (int64_t i = 0; i < m; ++i) {
      float* d = dot.data() + i * n;
      for (int64_t j = 0; j < n; ++j) d[j] = bn[size_t(j)] - 2.0f * d[j];  // + |q|^2, the same for all j
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [d](int32_t a, int32_t b) {
        return d[a] < d[b] || (d[a] == d[b] && a < b);
      });
      out[size_t(q0 + i)].assign(idx.begin(), idx.begin() + k);
    }
  }
  return out;
}

std::vector<int32_t> min_cost_assignment(const std::vector<double>& cost, int64_t n) {
  // Hungarian algorithm with potentials, O(n^3) (1-based internally).
  require(int64_t(cost.size()) == n * n, "audit", "assignment cost matrix is not n x n");
  const double INF = std::numeric_limits<double>::infinity();
  std::vector<double> u(size_t(n + 1), 0), v(size_t(n + 1), 0), minv(size_t(n + 1));
  std::vector<int64_t> p(size_t(n + 1), 0), way(size_t(n + 1), 0);
  std::vector<char> used(size_t(n + 1));
  for (int64_t i = 1; i <= n; ++i) {
    p[0] = i;
    int64_t j0 = 0;
    std::fill(minv.begin(), minv.end(), INF);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[size_t(j0)] = 1;
      const int64_t i0 = p[size_t(j0)];
      double delta = INF;
      int64_t j1 = 0;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[size_t(j)]) continue;
        const double cur = cost[size_t((i0 - 1) * n + (j - 1))] - u[size_t(i0)] - v[size_t(j)];
        if (cur < minv[size_t(j)]) {
          minv[size_t(j)] = cur;
          way[size_t(j)] = j0;
        }
        if (minv[size_t(j)] < delta) {
          delta = minv[size_t(j)];
          j1 = j;
        }
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[size_t(j)]) {
          u[size_t(p[size_t(j)])] += delta;
          v[size_t(j)] -= delta;
        } else {
          minv[size_t(j)] -= delta;
        }
      }
      j0 = j1;
    } while (p[size_t(j0)] != 0);
    do {
      const int64_t j1 = way[size_t(j0)];
      p[size_t(j0)] = p[size_t(j1)];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int32_t> out(static_cast<size_t>(n), -1);
  for (int64_t j = 1; j <= n; ++j)
    if (p[size_t(j)] > 0) out[size_t(p[size_t(j)] - 1)] = int32_t(j - 1);
  return out;
}

}  // namespace detail

AttackResult score_vocab_attack(const VocabAttack& a, const std::string& setting, const std::vector<int64_t>& tau,
                                const std::vector<int32_t>& victim, const std::vector<int32_t>& vocab_sample,
                                const std::vector<int>& ks, const std::vector<int32_t>* sent) {
  AttackResult r;
  r.attack = a.attack;
  r.setting = setting;
  r.seconds = a.seconds;
  r.victim_tokens = int64_t(victim.size());
  r.details = a.details;
  const int64_t n = int64_t(tau.size());
  require(sent ? int64_t(a.guesses.size()) >= n : int64_t(a.guesses.size()) == n, "audit",
          "attack '" + a.attack + "' guessed over " + std::to_string(a.guesses.size()) + " ids, vocabulary has " +
              std::to_string(n));
  require(!sent || sent->size() == victim.size(), "audit", "sent ids and victim differ in length", kExitError);
  // obfuscated id of victim token i: the copy the client sent, or tau
  auto obf_of = [&](size_t i) { return sent ? int64_t((*sent)[i]) : tau[size_t(victim[i])]; };
  // rank of the truth t among the candidates of obfuscated id o (-1: absent)
  auto rank_at = [&](const Guesses& g, int64_t o, int32_t t) -> int {
    if (o < 0 || o >= int64_t(g.size())) return -1;
    const auto& c = g[size_t(o)];
    for (size_t i = 0; i < c.size(); ++i)
      if (c[i] == t) return int(i);
    return -1;
  };
  auto rank_of = [&](const Guesses& g, int32_t t) { return rank_at(g, tau[size_t(t)], t); };
  auto score = [&](const Guesses& g, double& top1, std::vector<std::pair<int, double>>& topk, double& vocab) {
    std::vector<int64_t> hits(ks.size(), 0);
    int64_t hit1 = 0;
    for (size_t vi = 0; vi < victim.size(); ++vi) {
      const int32_t t = victim[vi];
      const int rk = rank_at(g, obf_of(vi), t);
      if (rk == 0) ++hit1;
      for (size_t i = 0; i < ks.size(); ++i)
        if (rk >= 0 && rk < ks[i]) ++hits[i];
    }
    top1 = victim.empty() ? 0.0 : double(hit1) / double(victim.size());
    topk.clear();
    for (size_t i = 0; i < ks.size(); ++i)
      topk.emplace_back(ks[i], victim.empty() ? 0.0 : double(hits[i]) / double(victim.size()));
    int64_t vh = 0;
    for (int32_t t : vocab_sample)
      if (rank_of(g, t) == 0) ++vh;
    vocab = vocab_sample.empty() ? -1.0 : double(vh) / double(vocab_sample.size());
  };
  score(a.guesses, r.ttrsr, r.topk, r.vocab_recovery);
  // Recovered text vs truth (top-1, unknown ids kept as -1).
  if (!victim.empty()) {
    std::vector<int32_t> rec(victim.size());
    for (size_t i = 0; i < victim.size(); ++i) {
      const auto& c = a.guesses[size_t(obf_of(i))];
      rec[i] = c.empty() ? -1 : c[0];
    }
    const size_t m = std::min<size_t>(victim.size(), 20000);  // BLEU on a prefix: n-gram maps grow fast
    r.bleu4 = bleu4(std::vector<int32_t>(rec.begin(), rec.begin() + long(m)),
                    std::vector<int32_t>(victim.begin(), victim.begin() + long(m)));
    r.cosine = bag_cosine(rec, victim);
  }
  if (!a.parts.empty()) {
    nlohmann::json parts = nlohmann::json::object();
    for (const auto& [name, g] : a.parts) {
      double t1, voc;
      std::vector<std::pair<int, double>> tk;
      score(g, t1, tk, voc);
      nlohmann::json pj = {{"ttrsr", t1}, {"vocab_recovery", voc}};
      for (const auto& [k, v] : tk) pj["top" + std::to_string(k)] = v;
      parts[name] = pj;
    }
    r.details["parts"] = parts;
  }
  return r;
}

std::vector<int32_t> sample_ids(int64_t n, int64_t count, uint64_t seed) {
  Seed s{};
  for (size_t i = 0; i < 8; ++i) s[i] = uint8_t(seed >> (8 * i));
  RngStream rng(s, "audit/vocab-sample");
  auto p = rng.permutation(n);
  count = std::min(count, n);
  std::vector<int32_t> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out[size_t(i)] = int32_t(p[size_t(i)]);
  return out;
}

Query make_query(const std::vector<int64_t>& tau, const std::vector<int32_t>& victim,
                 const std::vector<int32_t>& vocab_sample) {
  std::unordered_set<int32_t> seen;
  Query q;
  auto add = [&](int32_t t) {
    require(t >= 0 && t < int32_t(tau.size()), "audit", "token id " + std::to_string(t) + " outside the vocabulary");
    const int32_t o = int32_t(tau[size_t(t)]);
    if (seen.insert(o).second) q.obf_ids.push_back(o);
  };
  for (int32_t t : victim) add(t);
  for (int32_t t : vocab_sample) add(t);
  std::sort(q.obf_ids.begin(), q.obf_ids.end());
  return q;
}

}  // namespace aloepri::audit
