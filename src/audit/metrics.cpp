// Scoring helpers of the privacy audit (audit/metrics.h): token recovery, BLEU-4, bag-of-tokens cosine.
#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>

#include "aloepri/audit/metrics.h"

namespace aloepri::audit {

nlohmann::json AttackResult::to_json() const {
  nlohmann::json j = {{"attack", attack},
                      {"setting", setting},
                      {"ttrsr", ttrsr < 0 ? nlohmann::json(nullptr) : nlohmann::json(ttrsr)},  // -1: not scored
                      {"victim_tokens", victim_tokens},
                      {"seconds", seconds}};
  nlohmann::json tk = nlohmann::json::object();
  for (const auto& [k, v] : topk) tk["top" + std::to_string(k)] = v;
  j["topk"] = tk;
  // -1 = not measured: written as null so a reader never mistakes it for a figure.
  auto opt = [](double v) { return v < 0 ? nlohmann::json(nullptr) : nlohmann::json(v); };
  j["vocab_recovery"] = opt(vocab_recovery);
  j["pii_recovery"] = opt(pii_recovery);
  j["bleu4"] = opt(bleu4);
  j["cosine"] = opt(cosine);
  j["details"] = details.is_null() ? nlohmann::json::object() : details;
  return j;
}

double token_recovery(const std::vector<int32_t>& recovered, const std::vector<int32_t>& truth) {
  if (truth.empty()) return 0.0;
  size_t hit = 0;
  for (size_t i = 0; i < truth.size(); ++i)
    if (i < recovered.size() && recovered[i] == truth[i]) ++hit;
  return double(hit) / double(truth.size());
}

namespace {

// Counts of every n-gram of order `n` (as a vector key).
std::map<std::vector<int32_t>, int64_t> ngrams(const std::vector<int32_t>& s, size_t n) {
  std::map<std::vector<int32_t>, int64_t> c;
  if (s.size() < n) return c;
  for (size_t i = 0; i + n <= s.size(); ++i) ++c[std::vector<int32_t>(s.begin() + long(i), s.begin() + long(i + n))];
  return c;
}

}  // namespace

double bleu4(const std::vector<int32_t>& hyp, const std::vector<int32_t>& ref) {
  if (hyp.empty() || ref.empty()) return 0.0;
  double log_p = 0;
  for (size_t n = 1; n <= 4; ++n) {
    auto h = ngrams(hyp, n), r = ngrams(ref, n);
    int64_t match = 0, total = 0;
    for (const auto& [g, c] : h) {
      total += c;
      auto it = r.find(g);
      if (it != r.end()) match += std::min(c, it->second);
    }
    double p;
    if (n == 1) {
      if (match == 0) return 0.0;  // no unigram in common: BLEU is 0
      p = double(match) / double(total);
    } else {
      p = (double(match) + 1.0) / (double(total) + 1.0);  // add-1 smoothing on higher orders
    }
    log_p += 0.25 * std::log(p);
  }
  const double c = double(hyp.size()), r = double(ref.size());
  const double bp = c >= r ? 1.0 : std::exp(1.0 - r / c);
  return bp * std::exp(log_p);
}

double bag_cosine(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::unordered_map<int32_t, double> ca, cb;
  for (int32_t t : a) ca[t] += 1;
  for (int32_t t : b) cb[t] += 1;
  double dot = 0, na = 0, nb = 0;
  for (const auto& [t, v] : ca) {
    na += v * v;
    auto it = cb.find(t);
    if (it != cb.end()) dot += v * it->second;
  }
  for (const auto& [t, v] : cb) nb += v * v;
  if (na == 0 || nb == 0) return 0.0;
  return dot / std::sqrt(na * nb);
}

}  // namespace aloepri::audit
