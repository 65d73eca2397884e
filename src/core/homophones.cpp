// Homophonic vocabulary: copy allocation and the secret id map (homophones.h).
#include "aloepri/core/homophones.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"

namespace aloepri {

CopyRule parse_copy_rule(const std::string& s) {
  if (s == "flat") return CopyRule::Flat;
  if (s == "sqrt") return CopyRule::Sqrt;
  throw Error("--homophone-rule", "unknown rule '" + s + "' (supported: flat, sqrt)", kExitUsage);
}

std::string copy_rule_name(CopyRule r) { return r == CopyRule::Flat ? "flat" : "sqrt"; }

std::vector<int64_t> allocate_copies(const std::vector<double>& freq, int64_t extra, CopyRule rule,
                                     const std::vector<int64_t>& single) {
  const int64_t V = int64_t(freq.size());
  require(V > 0, "--homophones", "empty frequency table");
  require(extra >= 0, "--homophones", "must be >= 0, got " + std::to_string(extra), kExitUsage);
  std::vector<double> f(freq.size());
  for (int64_t t = 0; t < V; ++t) f[size_t(t)] = std::max(0.0, std::isfinite(freq[size_t(t)]) ? freq[size_t(t)] : 0.0);
  for (int64_t t : single)
    if (t >= 0 && t < V) f[size_t(t)] = 0;  // never chosen below while another id has weight
  std::vector<bool> fixed(size_t(V), false);
  for (int64_t t : single)
    if (t >= 0 && t < V) fixed[size_t(t)] = true;
  std::vector<int64_t> c(size_t(V), 1);
  if (extra == 0) return c;
  const bool any = std::any_of(f.begin(), f.end(), [](double x) { return x > 0; });
  if (!any) {
    // No frequencies: spread evenly over the ids that may take copies.
    std::vector<int64_t> ok;
    for (int64_t t = 0; t < V; ++t)
      if (!fixed[size_t(t)]) ok.push_back(t);
    require(!ok.empty(), "--homophones", "every id is fixed to one copy");
    for (int64_t i = 0; i < extra; ++i) ++c[size_t(ok[size_t(i) % ok.size()])];
    return c;
  }
  if (rule == CopyRule::Flat) {
    // Max-heap on the per-copy frequency f_t / c_t; ties to the lower id (deterministic).
    using E = std::pair<double, int64_t>;
    auto less = [](const E& a, const E& b) { return a.first < b.first || (a.first == b.first && a.second > b.second); };
    std::priority_queue<E, std::vector<E>, decltype(less)> q(less);
    for (int64_t t = 0; t < V; ++t)
      if (f[size_t(t)] > 0) q.push({f[size_t(t)], t});
    for (int64_t i = 0; i < extra; ++i) {
      auto [v, t] = q.top();
      q.pop();
      ++c[size_t(t)];
      q.push({f[size_t(t)] / double(c[size_t(t)]), t});
    }
    return c;
  }
  // Sqrt: whole parts of extra * sqrt(f_t) / sum first, then the largest remainders.
  std::vector<double> w(static_cast<size_t>(V));
  double sum = 0;
  for (int64_t t = 0; t < V; ++t) sum += (w[size_t(t)] = std::sqrt(f[size_t(t)]));
  std::vector<std::pair<double, int64_t>> rem;
  int64_t given = 0;
  for (int64_t t = 0; t < V; ++t) {
    const double share = double(extra) * w[size_t(t)] / sum;
    const int64_t whole = int64_t(std::floor(share));
    c[size_t(t)] += whole;
    given += whole;
    if (w[size_t(t)] > 0) rem.push_back({share - std::floor(share), t});
  }
  std::stable_sort(rem.begin(), rem.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = 0; given < extra; ++i, ++given) ++c[size_t(rem[i % rem.size()].second)];
  return c;
}

VocabMap::VocabMap(const Seed& seed, int64_t n, const std::vector<int64_t>& copies) {
  require(n > 0, "vocabulary", "empty vocabulary", kExitError);
  require(copies.empty() || int64_t(copies.size()) == n, "vocabulary",
          "copy table has " + std::to_string(copies.size()) + " entries, the vocabulary " + std::to_string(n),
          kExitError);
  first_.resize(size_t(n + 1));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t k = copies.empty() ? 1 : copies[size_t(t)];
    require(k >= 1, "vocabulary", "id " + std::to_string(t) + " has " + std::to_string(k) + " copies", kExitError);
    first_[size_t(t + 1)] = first_[size_t(t)] + k;
  }
  const int64_t np = first_[size_t(n)];
  // Without copies this is derive_tau(seed, n) exactly (same stream, same length).
  slot_ = RngStream(seed, "tau").permutation(np);
  to_plain_.assign(size_t(np), -1);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = first_[size_t(t)]; s < first_[size_t(t + 1)]; ++s) to_plain_[size_t(slot_[size_t(s)])] = t;
}

VocabMap::VocabMap(const std::vector<int64_t>& copies, std::vector<int64_t> slot_ids) : slot_(std::move(slot_ids)) {
  const int64_t n = copies.empty() ? int64_t(slot_.size()) : int64_t(copies.size());
  first_.resize(size_t(n + 1));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t k = copies.empty() ? 1 : copies[size_t(t)];
    require(k >= 1, "vocabulary", "id " + std::to_string(t) + " has " + std::to_string(k) + " copies", kExitError);
    first_[size_t(t + 1)] = first_[size_t(t)] + k;
  }
  const int64_t np = first_[size_t(n)];
  require(int64_t(slot_.size()) == np, "vocabulary",
          std::to_string(slot_.size()) + " obfuscated ids for " + std::to_string(np) + " copy slots", kExitError);
  to_plain_.assign(size_t(np), -1);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = first_[size_t(t)]; s < first_[size_t(t + 1)]; ++s) {
      const int64_t o = slot_[size_t(s)];
      require(o >= 0 && o < np && to_plain_[size_t(o)] == -1, "vocabulary", "not a permutation of the copy slots",
              kExitError);
      to_plain_[size_t(o)] = t;
    }
}

std::vector<int64_t> VocabMap::first_copies() const {
  std::vector<int64_t> v(static_cast<size_t>(plain_size()));
  for (int64_t t = 0; t < plain_size(); ++t) v[size_t(t)] = slot_[size_t(first_[size_t(t)])];
  return v;
}

std::vector<int64_t> VocabMap::copy_counts() const {
  std::vector<int64_t> v(static_cast<size_t>(plain_size()));
  for (int64_t t = 0; t < plain_size(); ++t) v[size_t(t)] = copies(t);
  return v;
}

nlohmann::json copies_to_json(const std::vector<int64_t>& copies) {
  nlohmann::json ids = nlohmann::json::array();
  int64_t extra = 0;
  for (size_t t = 0; t < copies.size(); ++t)
    if (copies[t] > 1) {
      ids.push_back({int64_t(t), copies[t]});
      extra += copies[t] - 1;
    }
  return {{"extra", extra}, {"ids", ids}};
}

std::vector<int64_t> copies_from_json(const nlohmann::json& j, int64_t n, const std::string& where) {
  std::vector<int64_t> c(size_t(n), 1);
  int64_t extra = 0;
  try {
    for (const auto& e : j.at("ids")) {
      const int64_t t = e.at(0).get<int64_t>(), k = e.at(1).get<int64_t>();
      require(t >= 0 && t < n && k >= 2 && c[size_t(t)] == 1, where,
              "bad homophone entry [" + std::to_string(t) + ", " + std::to_string(k) + "]", kExitKeyMismatch);
      c[size_t(t)] = k;
      extra += k - 1;
    }
    require(j.at("extra").get<int64_t>() == extra, where, "homophone 'extra' does not match its 'ids'",
            kExitKeyMismatch);
  } catch (const nlohmann::json::exception& e) {
    throw Error(where, std::string("bad 'homophones' record: ") + e.what(), kExitKeyMismatch);
  }
  return c;
}

}  // namespace aloepri
