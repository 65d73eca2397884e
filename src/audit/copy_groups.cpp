// Copy grouping of a homophonic vocabulary, from the weights and from the traffic
// (audit/copy_groups.h).
#include "aloepri/audit/copy_groups.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <tuple>
#include <unordered_map>

#include "aloepri/audit/weights.h"
#include "aloepri/core/error.h"
#include "weight_internal.h"

namespace aloepri::audit {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct UnionFind {
  std::vector<int32_t> parent, size;
  explicit UnionFind(size_t n) : parent(n), size(n, 1) { std::iota(parent.begin(), parent.end(), 0); }
  int32_t find(int32_t x) {
    while (parent[size_t(x)] != x) x = parent[size_t(x)] = parent[size_t(parent[size_t(x)])];
    return x;
  }
  void join(int32_t a, int32_t b) {  // roots
    if (a > b) std::swap(a, b);
    parent[size_t(b)] = a;
    size[size_t(a)] += size[size_t(b)];
  }
};

// Dense group numbers 0..G-1 in order of the first id of each root; ids with root -1 stay -1.
int32_t renumber(std::vector<int32_t>& of) {
  std::unordered_map<int32_t, int32_t> idx;
  for (auto& g : of) {
    if (g < 0) continue;
    auto [it, fresh] = idx.emplace(g, int32_t(idx.size()));
    g = it->second;
  }
  return int32_t(idx.size());
}

// Each half ([0, d) and [d, 2d)) of every row scaled to unit norm: squared distances are then
// 2 (1 - cosine) per half, so embedding and head weigh alike whatever their scales.
void unit_halves(Tensor& F, int64_t d) {
  for (int64_t r = 0; r < F.rows(); ++r)
    for (int h = 0; h < 2; ++h) {
      float* p = F.ptr() + r * 2 * d + h * d;
      double s = 0;
      for (int64_t i = 0; i < d; ++i) s += double(p[i]) * p[i];
      const double inv = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
      for (int64_t i = 0; i < d; ++i) p[i] = float(p[i] * inv);
    }
}

}  // namespace

CopyGrouping group_copies_by_weights(const Tensor& embed, const Tensor& head, int64_t n,
                                     const WeightGroupingOptions& opt) {
  const auto t0 = Clock::now();
  const int64_t np = embed.rows(), d = embed.cols();
  require(head.rows() == np && head.cols() == d, "copy grouping",
          "embedding " + embed.shape_str() + " and head " + head.shape_str() + " (one row per id) differ in shape");
  require(n > 0 && n <= np, "copy grouping",
          "the public vocabulary (" + std::to_string(n) + ") must be positive and at most the served one (" +
              std::to_string(np) + ")");
  // Stage 1: bitwise identical (embedding row, head row).
  std::vector<int32_t> of(static_cast<size_t>(np), -1), rep;
  std::unordered_map<uint64_t, std::vector<int32_t>> by_hash;
  const size_t row_bytes = size_t(d) * sizeof(float);
  for (int64_t id = 0; id < np; ++id) {
    uint64_t h = 1469598103934665603ull;
    for (const Tensor* m : {&embed, &head}) {
      const auto* b = reinterpret_cast<const unsigned char*>(m->ptr() + id * d);
      for (size_t i = 0; i < row_bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
    }
    int32_t found = -1;
    for (int32_t g : by_hash[h]) {
      const int64_t r = rep[size_t(g)];
      if (std::memcmp(embed.ptr() + id * d, embed.ptr() + r * d, row_bytes) == 0 &&
          std::memcmp(head.ptr() + id * d, head.ptr() + r * d, row_bytes) == 0) {
        found = g;
        break;
      }
    }
    if (found < 0) {
      found = int32_t(rep.size());
      rep.push_back(int32_t(id));
      by_hash[h].push_back(found);
    }
    of[size_t(id)] = found;
  }
  const int64_t identical = int64_t(rep.size());
  CopyGrouping out;
  out.info = {{"method", "weights: identical rows, then closest standardized (embedding, head) rows"},
              {"served_ids", np}, {"public_ids", n}, {"identical_groups", identical}, {"gate", opt.gate},
              {"neighbours", opt.neighbours}, {"max_group", opt.max_group}};
  // Stage 2: the closest groups, closest first.
  UnionFind uf(rep.size());
  std::fill(uf.size.begin(), uf.size.end(), 0);  // ids per group, for max_group
  for (int32_t g : of) ++uf.size[size_t(g)];
  int64_t groups = identical, merged = 0;
  std::string stop = groups <= n ? "identical rows already give at most n groups" : "";
  if (groups > n) {
    const int64_t G = groups;
    Tensor F({G, 2 * d});
    for (int64_t g = 0; g < G; ++g) {
      std::copy_n(embed.ptr() + int64_t(rep[size_t(g)]) * d, d, F.ptr() + g * 2 * d);
      std::copy_n(head.ptr() + int64_t(rep[size_t(g)]) * d, d, F.ptr() + g * 2 * d + d);
    }
    std::vector<double> mean, sd;
    internal::column_stats(F, mean, sd);
    internal::standardize(F, mean, sd);
    unit_halves(F, d);
    // The typical distance: median over random pairs (the attacker's own draws).
    std::mt19937_64 rng(0x636f70696573ull);
    std::vector<double> sample;
    for (int i = 0; i < 4000; ++i) {
      const int64_t a = int64_t(rng() % uint64_t(G)), b = int64_t(rng() % uint64_t(G));
      if (a != b) sample.push_back(internal::sq_dist(F.ptr() + a * 2 * d, F.ptr() + b * 2 * d, 2 * d));
    }
    std::nth_element(sample.begin(), sample.begin() + ptrdiff_t(sample.size() / 2), sample.end());
    const double median = sample.empty() ? 0.0 : sample[sample.size() / 2];
    const double limit = opt.gate > 0 ? opt.gate * opt.gate * median : INFINITY;
    const auto nn = detail::nearest_rows(F, F, opt.neighbours + 1);
    std::vector<std::tuple<double, int32_t, int32_t>> edges;
    for (int64_t g = 0; g < G; ++g)
      for (int32_t h : nn[size_t(g)])
        if (h > g || (h < g && std::find(nn[size_t(h)].begin(), nn[size_t(h)].end(), int32_t(g)) == nn[size_t(h)].end()))
          edges.emplace_back(internal::sq_dist(F.ptr() + g * 2 * d, F.ptr() + int64_t(h) * 2 * d, 2 * d), int32_t(g), h);
    std::sort(edges.begin(), edges.end());
    stop = "candidate pairs exhausted";
    double last = 0;
    for (const auto& [dist, a, b] : edges) {
      if (groups <= n) {
        stop = "n groups reached";
        break;
      }
      if (dist > limit) {
        stop = "gate: next pair farther than gate x median distance";
        break;
      }
      const int32_t ra = uf.find(a), rb = uf.find(b);
      if (ra == rb) continue;
      if (opt.max_group > 0 && int64_t(uf.size[size_t(ra)]) + uf.size[size_t(rb)] > opt.max_group) continue;
      uf.join(ra, rb);
      --groups;
      ++merged;
      last = dist;
    }
    out.info["median_distance"] = std::sqrt(median);
    out.info["last_merge_distance"] = std::sqrt(last);
  }
  for (auto& g : of) g = uf.find(g);
  out.groups = renumber(of);
  out.group = std::move(of);
  out.info["merged_by_distance"] = merged;
  out.info["groups"] = out.groups;
  out.info["stopped"] = stop;
  out.info["seconds"] = since(t0);
  return out;
}

CopyGrouping group_copies_by_context(const std::vector<TokenSeq>& traffic, int32_t symbols,
                                     const std::vector<int64_t>& copies, const std::vector<double>& unigram,
                                     const ContextGroupingOptions& opt) {
  const auto t0 = Clock::now();
  require(symbols > 0, "copy grouping", "no symbols");
  require(copies.size() == unigram.size() && !copies.empty(), "copy grouping",
          "the copy table (" + std::to_string(copies.size()) + " ids) and the frequency table (" +
              std::to_string(unigram.size()) + " ids) differ");
  std::vector<int64_t> count(static_cast<size_t>(symbols), 0);
  int64_t N = 0;
  for (const auto& d : traffic)
    for (int32_t s : d) {
      require(s >= 0 && s < symbols, "copy grouping", "traffic id " + std::to_string(s) + " out of range");
      ++count[size_t(s)];
      ++N;
    }
  // How many merges this much traffic calls for, from the public tables: copy j of t is seen
  // Poisson(lambda = N p_t / c_t) times; of the k_t copies seen min_count times or more, k_t - 1
  // are merges (expectation of max(k_t - 1, 0) = E k_t - P(k_t >= 1)).
  double total = 0;
  int64_t max_copies = 1;
  for (size_t t = 0; t < unigram.size(); ++t) {
    total += std::max(0.0, unigram[t]);
    max_copies = std::max(max_copies, copies[t]);
  }
  double target = 0;
  for (size_t t = 0; t < unigram.size() && total > 0; ++t) {
    if (copies[t] < 2 || unigram[t] <= 0) continue;
    const double lam = double(N) * unigram[t] / total / double(copies[t]);
    // P(Poisson(lam) >= min_count)
    double below = 0, term = std::exp(-lam);
    for (int k = 0; k < opt.min_count; ++k) {
      below += term;
      term *= lam / double(k + 1);
    }
    const double q = std::max(0.0, 1.0 - below);
    target += double(copies[t]) * q - (1.0 - std::pow(1.0 - q, double(copies[t])));
  }
  const int64_t want = int64_t(std::llround(target));

  // The symbols that are grouped: seen min_count times or more.
  std::vector<int32_t> row_of(static_cast<size_t>(symbols), -1), sym;
  for (int32_t s = 0; s < symbols; ++s)
    if (count[size_t(s)] >= opt.min_count) {
      row_of[size_t(s)] = int32_t(sym.size());
      sym.push_back(s);
    }
  const int32_t R = int32_t(sym.size());
  std::vector<int32_t> label(static_cast<size_t>(symbols));  // neighbours are read through this
  std::iota(label.begin(), label.end(), 0);
  std::vector<int32_t> of(static_cast<size_t>(symbols), -1);
  nlohmann::json passes = nlohmann::json::array();
  int64_t merged = 0;
  for (int pass = 0; pass < std::max(1, opt.passes); ++pass) {
    // Context features: 2 * label + side (0 left, 1 right), label `symbols` = document boundary.
    std::vector<std::unordered_map<int32_t, double>> ctx(static_cast<size_t>(R));
    for (const auto& d : traffic)
      for (size_t i = 0; i < d.size(); ++i) {
        const int32_t r = row_of[size_t(d[i])];
        if (r < 0) continue;
        const int32_t left = i > 0 ? label[size_t(d[i - 1])] : symbols;
        const int32_t right = i + 1 < d.size() ? label[size_t(d[i + 1])] : symbols;
        ctx[size_t(r)][2 * left] += 1;
        ctx[size_t(r)][2 * right + 1] += 1;
      }
    // PPMI weights, rows to unit norm, inverted index.
    std::unordered_map<int32_t, double> fcount;
    double T = 0;
    for (const auto& c : ctx)
      for (const auto& [f, v] : c) {
        fcount[f] += v;
        T += v;
      }
    std::unordered_map<int32_t, std::vector<std::pair<int32_t, float>>> post;
    std::vector<std::unordered_map<int32_t, float>> agg(static_cast<size_t>(R));  // a group's summed unit rows
    for (int32_t r = 0; r < R; ++r) {
      double rc = 0;
      for (const auto& [f, v] : ctx[size_t(r)]) rc += v;
      std::vector<std::pair<int32_t, double>> w;
      double norm = 0;
      for (const auto& [f, v] : ctx[size_t(r)]) {
        const double pmi = std::log(v * T / (rc * fcount[f]));
        if (pmi > 0) {
          w.emplace_back(f, pmi);
          norm += pmi * pmi;
        }
      }
      norm = norm > 0 ? 1.0 / std::sqrt(norm) : 0.0;
      for (const auto& [f, v] : w) {
        post[f].emplace_back(r, float(v * norm));
        agg[size_t(r)][f] = float(v * norm);
      }
    }
    // Cosines through the shared features; each row keeps its `neighbours` best.
    std::vector<std::vector<std::pair<int32_t, float>>> rows(static_cast<size_t>(R));
    for (auto& [f, list] : post) {
      if (int64_t(list.size()) > opt.max_posting) continue;
      for (const auto& [r, v] : list) rows[size_t(r)].emplace_back(f, v);
    }
    std::vector<float> acc(static_cast<size_t>(R), 0.0f);
    std::vector<int32_t> touched;
    std::vector<std::tuple<float, int32_t, int32_t>> edges;
    for (int32_t r = 0; r < R; ++r) {
      touched.clear();
      for (const auto& [f, v] : rows[size_t(r)])
        for (const auto& [r2, v2] : post[f]) {
          if (r2 == r) continue;
          if (acc[size_t(r2)] == 0.0f) touched.push_back(r2);
          acc[size_t(r2)] += v * v2;
        }
      const size_t k = std::min(touched.size(), size_t(std::max(1, opt.neighbours)));
      std::partial_sort(touched.begin(), touched.begin() + ptrdiff_t(k), touched.end(),
                        [&](int32_t a, int32_t b) { return acc[size_t(a)] > acc[size_t(b)] || (acc[size_t(a)] == acc[size_t(b)] && a < b); });
      for (size_t i = 0; i < k; ++i) {
        const int32_t r2 = touched[i];
        if (acc[size_t(r2)] >= opt.min_cosine) edges.emplace_back(acc[size_t(r2)], std::min(r, r2), std::max(r, r2));
      }
      for (int32_t r2 : touched) acc[size_t(r2)] = 0.0f;
    }
    std::sort(edges.begin(), edges.end(), [](const auto& a, const auto& b) {
      return std::get<0>(a) > std::get<0>(b) ||
             (std::get<0>(a) == std::get<0>(b) && std::tie(std::get<1>(a), std::get<2>(a)) < std::tie(std::get<1>(b), std::get<2>(b)));
    });
    // Centroid linkage: a pair joins its two groups only when the groups' summed contexts are
    // still alike (single linkage chains whole word classes into one group).
    UnionFind uf(static_cast<size_t>(R));
    std::vector<double> agg_sq(static_cast<size_t>(R), 1.0);
    auto group_cosine = [&](int32_t ra, int32_t rb) {
      const auto& x = agg[size_t(ra)].size() < agg[size_t(rb)].size() ? agg[size_t(ra)] : agg[size_t(rb)];
      const auto& y = &x == &agg[size_t(ra)] ? agg[size_t(rb)] : agg[size_t(ra)];
      double dot = 0;
      for (const auto& [f, v] : x)
        if (auto it = y.find(f); it != y.end()) dot += double(v) * it->second;
      const double den = std::sqrt(agg_sq[size_t(ra)] * agg_sq[size_t(rb)]);
      return den > 0 ? dot / den : 0.0;
    };
    merged = 0;
    int64_t refused = 0;
    float last = 1;
    for (const auto& [c, a, b] : edges) {
      if (merged >= want) break;
      const int32_t ra = uf.find(a), rb = uf.find(b);
      if (ra == rb || uf.size[size_t(ra)] + uf.size[size_t(rb)] > max_copies) continue;
      if (opt.linkage_cosine > 0 && group_cosine(ra, rb) < opt.linkage_cosine) {
        ++refused;
        continue;
      }
      uf.join(ra, rb);
      {  // the joined root keeps the sum of both
        const int32_t root = std::min(ra, rb), other = std::max(ra, rb);
        auto& into = agg[size_t(root)];
        for (const auto& [f, v] : agg[size_t(other)]) into[f] += v;
        agg[size_t(other)].clear();
        double sq = 0;
        for (const auto& [f, v] : into) sq += double(v) * v;
        agg_sq[size_t(root)] = sq;
      }
      ++merged;
      last = c;
    }
    std::fill(of.begin(), of.end(), -1);
    for (int32_t r = 0; r < R; ++r) of[size_t(sym[size_t(r)])] = sym[size_t(uf.find(r))];
    // Seen symbols below min_count stay alone.
    for (int32_t s = 0; s < symbols; ++s)
      if (count[size_t(s)] > 0 && of[size_t(s)] < 0) of[size_t(s)] = s;
    passes.push_back({{"candidate_pairs", edges.size()}, {"merges", merged}, {"refused_by_linkage", refused},
                      {"last_merge_cosine", last}});
    for (int32_t s = 0; s < symbols; ++s) label[size_t(s)] = of[size_t(s)] >= 0 ? of[size_t(s)] : s;
  }
  CopyGrouping out;
  out.groups = renumber(of);
  out.group = std::move(of);
  out.info = {{"method", "traffic: left/right neighbour contexts (PPMI, cosine), closest pairs merged first"},
              {"traffic_tokens", N}, {"symbols_seen", std::count_if(count.begin(), count.end(), [](int64_t c) { return c > 0; })},
              {"symbols_grouped", R}, {"min_count", opt.min_count}, {"neighbours", opt.neighbours},
              {"min_cosine", opt.min_cosine}, {"linkage_cosine", opt.linkage_cosine},
              {"max_group", max_copies}, {"merges_predicted", want}, {"merges", merged}, {"groups", out.groups},
              {"passes", passes}, {"seconds", since(t0)}};
  return out;
}

nlohmann::json GroupingScore::to_json() const {
  return {{"precision", precision}, {"recall", recall}, {"tokens_exact", tokens_exact}, {"ids", ids},
          {"groups", groups}, {"tokens", tokens}, {"pairs_grouped", pairs_grouped}, {"pairs_true", pairs_true}};
}

GroupingScore score_copy_grouping(const CopyGrouping& g, const std::vector<int32_t>& symbol_to_plain) {
  require(g.group.size() <= symbol_to_plain.size(), "copy grouping score",
          "the grouping covers " + std::to_string(g.group.size()) + " ids, the truth " +
              std::to_string(symbol_to_plain.size()));
  GroupingScore s;
  std::unordered_map<int32_t, int64_t> gsize, tsize;
  std::map<std::pair<int32_t, int32_t>, int64_t> both;
  for (size_t id = 0; id < g.group.size(); ++id) {
    const int32_t gr = g.group[id];
    if (gr < 0) continue;
    const int32_t t = symbol_to_plain[id];
    ++gsize[gr];
    ++tsize[t];
    ++both[{gr, t}];
    ++s.ids;
  }
  auto pairs = [](int64_t m) { return m * (m - 1) / 2; };
  int64_t tp = 0;
  for (const auto& [k, m] : both) tp += pairs(m);
  for (const auto& [k, m] : gsize) s.pairs_grouped += pairs(m);
  for (const auto& [k, m] : tsize) s.pairs_true += pairs(m);
  s.precision = s.pairs_grouped > 0 ? double(tp) / double(s.pairs_grouped) : 1.0;
  s.recall = s.pairs_true > 0 ? double(tp) / double(s.pairs_true) : 1.0;
  s.groups = int64_t(gsize.size());
  s.tokens = int64_t(tsize.size());
  // A token's copies are one group alone when a single (group, token) cell holds all of them and
  // that group holds nothing else.
  int64_t multi = 0, exact = 0;
  for (const auto& [k, m] : both) {
    const int64_t mt = tsize[k.second];
    if (mt < 2 || m != mt) continue;
    if (gsize[k.first] == m) ++exact;
  }
  for (const auto& [t, m] : tsize) multi += (m >= 2);
  s.tokens_exact = multi > 0 ? double(exact) / double(multi) : 1.0;
  return s;
}

}  // namespace aloepri::audit
