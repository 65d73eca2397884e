// The attacker's prior for the token-stream attacks: unigram and bigram counts of a plaintext
// corpus, as a Witten-Bell smoothed bigram language model (audit/stream_attacks.h).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/error.h"

namespace aloepri::audit {

namespace {
inline size_t slot_of(uint64_t key, size_t mask) {
  return size_t((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
}
}  // namespace

BigramModel BigramModel::build(const std::vector<TokenSeq>& docs, int32_t vocab) {
  return build_weighted(docs, std::vector<double>(docs.size(), 1.0), vocab);
}

BigramModel BigramModel::build_weighted(const std::vector<TokenSeq>& docs, const std::vector<double>& weight,
                                        int32_t vocab) {
  if (vocab <= 0) throw Error("prior", "vocabulary size must be positive", kExitError);
  if (weight.size() != docs.size()) throw Error("prior", "one weight per document expected", kExitError);
  BigramModel m;
  m.vocab_ = vocab;
  m.uni_.assign(size_t(vocab), 0.0);
  m.ctx_.assign(size_t(vocab), 0.0);
  m.types_.assign(size_t(vocab), 0.0);
  size_t cap = 1 << 16;
  m.keys_.assign(cap, 0);
  m.vals_.assign(cap, 0.0f);
  auto grow = [&m]() {
    std::vector<uint64_t> ok = std::move(m.keys_);
    std::vector<float> ov = std::move(m.vals_);
    size_t cap2 = ok.size() * 2, mask = cap2 - 1;
    m.keys_.assign(cap2, 0);
    m.vals_.assign(cap2, 0.0f);
    for (size_t i = 0; i < ok.size(); ++i) {
      if (!ok[i]) continue;
      size_t s = slot_of(ok[i], mask);
      while (m.keys_[s]) s = (s + 1) & mask;
      m.keys_[s] = ok[i];
      m.vals_[s] = ov[i];
    }
  };
  for (size_t d = 0; d < docs.size(); ++d) {
    const double w = weight[d];
    if (w <= 0) continue;
    const auto& doc = docs[d];
    for (size_t i = 0; i < doc.size(); ++i) {
      int32_t y = doc[i];
      if (y < 0 || y >= vocab) throw Error("prior", "token id " + std::to_string(y) + " outside the vocabulary");
      m.uni_[size_t(y)] += w;
      m.total_ += w;
      if (i == 0) continue;
      int32_t x = doc[i - 1];
      uint64_t key = uint64_t(x) * uint64_t(vocab) + uint64_t(y) + 1;
      if (2 * (m.nfill_ + 1) > m.keys_.size()) grow();
      size_t mask = m.keys_.size() - 1, s = slot_of(key, mask);
      while (m.keys_[s] && m.keys_[s] != key) s = (s + 1) & mask;
      if (!m.keys_[s]) {
        m.keys_[s] = key;
        ++m.nfill_;
        m.types_[size_t(x)] += 1;
      }
      m.vals_[s] += float(w);
      m.ctx_[size_t(x)] += w;
    }
  }
  m.finish();
  return m;
}

void BigramModel::finish() {
  log_uni_.resize(size_t(vocab_));
  pu_.resize(size_t(vocab_));
  const double denom = total_ + 0.5 * vocab_;
  for (int32_t y = 0; y < vocab_; ++y) {
    pu_[size_t(y)] = (uni_[size_t(y)] + 0.5) / denom;
    log_uni_[size_t(y)] = std::log(pu_[size_t(y)]);
  }
  ranked_.resize(size_t(vocab_));
  std::iota(ranked_.begin(), ranked_.end(), 0);
  std::stable_sort(ranked_.begin(), ranked_.end(),
                   [this](int32_t a, int32_t b) { return uni_[size_t(a)] > uni_[size_t(b)]; });
}

double BigramModel::count(int32_t x, int32_t y) const {
  uint64_t key = uint64_t(x) * uint64_t(vocab_) + uint64_t(y) + 1;
  size_t mask = keys_.size() - 1, s = slot_of(key, mask);
  while (keys_[s]) {
    if (keys_[s] == key) return vals_[s];
    s = (s + 1) & mask;
  }
  return 0.0;
}

double BigramModel::logp(int32_t x, int32_t y) const {
  const double c = ctx_[size_t(x)];
  if (c <= 0) return log_uni_[size_t(y)];
  const double t = types_[size_t(x)];
  return std::log((count(x, y) + t * pu_[size_t(y)]) / (c + t));
}

}  // namespace aloepri::audit
