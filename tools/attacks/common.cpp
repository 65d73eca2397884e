#include "common.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <random>

#include "aloepri/core/error.h"

namespace aloepri::attacks {

namespace {
void check_ids(const uint16_t* p, int64_t n, int64_t vocab, const std::string& where) {
  for (int64_t i = 0; i < n; ++i)
    if (int64_t(p[i]) >= vocab)
      throw Error(where, "token id " + std::to_string(p[i]) + " >= vocabulary size " + std::to_string(vocab));
}
}  // namespace

torch::Tensor spread_windows(const std::vector<uint16_t>& ids, int64_t count, int64_t seq, int64_t vocab,
                             const std::string& where) {
  const int64_t total = int64_t(ids.size()) / seq;
  if (count <= 0 || seq <= 0 || total < count)
    throw Error(where, "token stream of " + std::to_string(ids.size()) + " ids is too short for " +
                           std::to_string(count) + " windows of " + std::to_string(seq));
  auto out = torch::empty({count, seq}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t off = (i * total / count) * seq;
    check_ids(&ids[size_t(off)], seq, vocab, where);
    for (int64_t t = 0; t < seq; ++t) p[i * seq + t] = ids[size_t(off + t)];
  }
  return out;
}

torch::Tensor random_windows(const std::vector<uint16_t>& ids, int64_t count, int64_t seq, int64_t vocab,
                             uint64_t seed, const std::string& where) {
  if (int64_t(ids.size()) < seq + 1) throw Error(where, "token stream shorter than one window");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, ids.size() - size_t(seq));
  auto out = torch::empty({count, seq}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const size_t off = pick(rng);
    check_ids(&ids[off], seq, vocab, where);
    for (int64_t t = 0; t < seq; ++t) p[i * seq + t] = ids[off + size_t(t)];
  }
  return out;
}

torch::Tensor map_ids(const torch::Tensor& ids, const std::vector<int64_t>& tau) {
  auto out = ids.clone().contiguous();
  auto* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    if (p[i] < 0 || p[i] >= int64_t(tau.size())) throw Error("map_ids", "token id outside the permutation");
    p[i] = tau[size_t(p[i])];
  }
  return out;
}

torch::Tensor observe(const Llama& model, const torch::Tensor& ids, const std::string& target, int64_t layer) {
  torch::NoGradGuard ng;
  auto x = model.embed_ids(ids);
  if (target == "hidden") return layer < 0 ? x : model.run(x, layer);
  if (target == "attn") {
    if (layer < 0) throw Error("--layer", "attention scores need a layer >= 0", kExitUsage);
    Trace tr;
    model.run(x, layer, &tr, layer);
    return tr.scores;
  }
  throw Error("--target", "unknown target '" + target + "' (hidden | attn)", kExitUsage);
}

double topk_fraction(const torch::Tensor& ranked, const torch::Tensor& truth, int64_t k) {
  k = std::min<int64_t>(k, ranked.size(1));
  auto t = truth.reshape({-1, 1});
  auto hit = (ranked.narrow(1, 0, k) == t).any(1);
  return hit.to(torch::kDouble).mean().item<double>();
}

void score(audit::AttackResult& r, const torch::Tensor& ranked, const torch::Tensor& truth,
           const std::vector<int64_t>& ks) {
  auto rk = ranked.to(torch::kLong).contiguous();
  auto tr = truth.to(torch::kLong).contiguous();
  r.victim_tokens = tr.numel();
  r.ttrsr = topk_fraction(rk, tr, 1);
  r.topk.clear();
  for (int64_t k : ks)
    if (k <= rk.size(1)) r.topk.emplace_back(int(k), topk_fraction(rk, tr, k));
  // BLEU-4 and bag-of-tokens cosine per victim window, averaged.
  const int64_t B = tr.size(0), T = tr.numel() / B;
  double bl = 0, cs = 0;
  auto top1 = rk.select(1, 0).reshape({B, T}).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> h(top1[b].data_ptr<int64_t>(), top1[b].data_ptr<int64_t>() + T);
    std::vector<int32_t> g(tr[b].data_ptr<int64_t>(), tr[b].data_ptr<int64_t>() + T);
    bl += audit::bleu4(h, g);
    cs += audit::bag_cosine(h, g);
  }
  r.bleu4 = bl / double(B);
  r.cosine = cs / double(B);
}

nlohmann::json result_json(const audit::AttackResult& r) { return r.to_json(); }

std::vector<int64_t> min_cost_assignment(const std::vector<std::vector<double>>& a) {
  // Hungarian algorithm with potentials (rows 1..n, columns 1..n; column 0 is a sentinel).
  const size_t n = a.size();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0), v(n + 1, 0);
  std::vector<size_t> p(n + 1, 0), way(n + 1, 0);
  for (size_t i = 1; i <= n; ++i) {
    if (a[i - 1].size() != n) throw Error("min_cost_assignment", "cost matrix is not square");
    p[0] = i;
    size_t j0 = 0;
    std::vector<double> minv(n + 1, inf);
    std::vector<bool> used(n + 1, false);
    do {
      used[j0] = true;
      const size_t i0 = p[j0];
      double delta = inf;
      size_t j1 = 0;
      for (size_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const double cur = a[i0 - 1][j - 1] - u[i0] - v[j];
        if (cur < minv[j]) minv[j] = cur, way[j] = j0;
        if (minv[j] < delta) delta = minv[j], j1 = j;
      }
      for (size_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const size_t j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  std::vector<int64_t> col(n, -1);
  for (size_t j = 1; j <= n; ++j) col[p[j] - 1] = int64_t(j - 1);
  return col;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace aloepri::attacks
