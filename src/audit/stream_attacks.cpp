// TFMA and SDA on the obfuscated token stream, and their scoring (audit/stream_attacks.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <unordered_map>

#include "aloepri/audit/pii.h"
#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/error.h"

namespace aloepri::audit {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Observed obfuscated ids sorted by traffic frequency (most frequent first, ties: smaller id).
struct TrafficStats {
  std::vector<int64_t> count;   // per obfuscated id
  std::vector<int32_t> ranked;  // observed ids only
};
TrafficStats traffic_stats(const std::vector<TokenSeq>& traffic, int32_t vocab) {
  TrafficStats t;
  t.count.assign(size_t(vocab), 0);
  for (const auto& s : traffic)
    for (int32_t id : s) {
      if (id < 0 || id >= vocab) throw Error("traffic", "token id " + std::to_string(id) + " outside the vocabulary");
      ++t.count[size_t(id)];
    }
  for (int32_t id = 0; id < vocab; ++id)
    if (t.count[size_t(id)] > 0) t.ranked.push_back(id);
  std::stable_sort(t.ranked.begin(), t.ranked.end(),
                   [&](int32_t a, int32_t b) { return t.count[size_t(a)] > t.count[size_t(b)]; });
  return t;
}

// Prior ranks nearest to r: r, r+1, r-1, r+2, r-2, ... (k of them, inside [0, n)).
template <class F>
void nearest_ranks(int64_t r, int64_t n, int k, F&& f) {
  int got = 0;
  for (int64_t d = 0; got < k && (r - d >= 0 || r + d < n); ++d) {
    if (d == 0) {
      if (r < n) { f(r); ++got; }
      continue;
    }
    if (r + d < n && got < k) { f(r + d); ++got; }
    if (r - d >= 0 && r - d < n && got < k) { f(r - d); ++got; }
  }
}

// Corpus-level BLEU-4 over all requests (clipped n-gram matches summed over requests, add-1
// smoothing on orders 2-4 as audit/metrics.h's sentence-level bleu4, brevity penalty); the sentence-level
// helper would treat the whole stream as one sentence.
double corpus_bleu4(const std::vector<TokenSeq>& hyp, const std::vector<TokenSeq>& ref) {
  double match[4] = {0, 0, 0, 0}, total[4] = {0, 0, 0, 0};
  size_t hlen = 0, rlen = 0;
  for (size_t s = 0; s < hyp.size(); ++s) {
    const auto& h = hyp[s];
    const auto& r = ref[s];
    hlen += h.size();
    rlen += r.size();
    for (int n = 1; n <= 4; ++n) {
      if (h.size() < size_t(n)) continue;
      std::unordered_map<uint64_t, int> rc;
      auto key = [n](const TokenSeq& v, size_t i) {
        uint64_t k = 1469598103934665603ull;
        for (int j = 0; j < n; ++j) k = (k ^ uint64_t(uint32_t(v[i + size_t(j)]))) * 1099511628211ull;
        return k;
      };
      if (r.size() >= size_t(n))
        for (size_t i = 0; i + size_t(n) <= r.size(); ++i) ++rc[key(r, i)];
      for (size_t i = 0; i + size_t(n) <= h.size(); ++i) {
        auto it = rc.find(key(h, i));
        if (it != rc.end() && it->second > 0) {
          --it->second;
          match[n - 1] += 1;
        }
        total[n - 1] += 1;
      }
    }
  }
  if (hlen == 0) return 0.0;
  double logsum = 0;
  for (int n = 0; n < 4; ++n) {
    double p = n == 0 ? (total[0] > 0 ? match[0] / total[0] : 0.0) : (match[n] + 1) / (total[n] + 1);
    if (p <= 0) return 0.0;
    logsum += std::log(p) / 4;
  }
  double bp = hlen >= rlen ? 1.0 : std::exp(1.0 - double(rlen) / double(hlen));
  return bp * std::exp(logsum);
}

// ---- SDA state -------------------------------------------------------------------------------
struct Edge {
  int32_t to;
  double n;
};
struct SdaState {
  const BigramModel& lm;
  std::vector<int32_t> sym_id;                // symbol -> obfuscated id
  std::vector<double> cnt;                    // symbol -> traffic count
  std::vector<std::vector<Edge>> out, in;     // symbol bigram graph
  std::vector<int32_t> m;                     // symbol -> plaintext id (injective)
  std::vector<int32_t> owner;                 // plaintext id -> symbol or -1
  std::vector<int32_t> prior_rank;            // plaintext id -> rank in the prior
  explicit SdaState(const BigramModel& l) : lm(l) {}

  // sum of n * log P over the edges touching the symbols in A (each edge once)
  double edge_sum(const int32_t* A, int na) const {
    double s = 0;
    for (int i = 0; i < na; ++i) {
      int32_t a = A[i];
      const int32_t ya = m[size_t(a)];
      for (const auto& e : out[size_t(a)]) s += e.n * lm.logp(ya, m[size_t(e.to)]);
      for (const auto& e : in[size_t(a)]) {
        bool inA = false;
        for (int j = 0; j < na; ++j) inA |= (A[j] == e.to);
        if (!inA) s += e.n * lm.logp(m[size_t(e.to)], ya);
      }
    }
    return s;
  }
  double total_loglik() const {
    double s = 0;
    for (size_t a = 0; a < out.size(); ++a)
      for (const auto& e : out[a]) s += e.n * lm.logp(m[a], m[size_t(e.to)]);
    return s;
  }
  // local score of giving symbol a the plaintext id y, the others fixed
  double local(int32_t a, int32_t y) const {
    double s = 0;
    for (const auto& e : out[size_t(a)]) s += e.n * lm.logp(y, e.to == a ? y : m[size_t(e.to)]);
    for (const auto& e : in[size_t(a)])
      if (e.to != a) s += e.n * lm.logp(m[size_t(e.to)], y);
    return s;
  }
};

}  // namespace

Guesses tfma(const std::vector<TokenSeq>& traffic, const BigramModel& prior, int32_t vocab, int k) {
  if (prior.vocab() != vocab) throw Error("TFMA", "prior and traffic vocabularies differ", kExitError);
  auto ts = traffic_stats(traffic, vocab);
  const auto& pr = prior.ranked();
  Guesses g(static_cast<size_t>(vocab));
  for (size_t r = 0; r < ts.ranked.size(); ++r) {
    auto& c = g[size_t(ts.ranked[r])];
    c.reserve(size_t(k));
    nearest_ranks(int64_t(r), int64_t(pr.size()), k, [&](int64_t q) { c.push_back(pr[size_t(q)]); });
  }
  return g;
}

Guesses sda(const std::vector<TokenSeq>& traffic, const BigramModel& prior, int32_t vocab, const SdaOptions& opt,
            SdaStats* stats) {
  if (prior.vocab() != vocab) throw Error("SDA", "prior and traffic vocabularies differ", kExitError);
  const auto t0 = Clock::now();
  auto ts = traffic_stats(traffic, vocab);
  const int32_t S = int32_t(ts.ranked.size());
  Guesses g(static_cast<size_t>(vocab));
  if (S == 0) return g;
  SdaState st(prior);
  st.sym_id = ts.ranked;
  std::vector<int32_t> sym_of(size_t(vocab), -1);
  for (int32_t s = 0; s < S; ++s) sym_of[size_t(ts.ranked[size_t(s)])] = s;
  st.cnt.resize(size_t(S));
  for (int32_t s = 0; s < S; ++s) st.cnt[size_t(s)] = double(ts.count[size_t(ts.ranked[size_t(s)])]);
  {  // ciphertext bigram graph
    std::vector<uint64_t> pairs;
    for (const auto& seq : traffic)
      for (size_t i = 1; i < seq.size(); ++i)
        pairs.push_back(uint64_t(sym_of[size_t(seq[i - 1])]) * uint64_t(S) + uint64_t(sym_of[size_t(seq[i])]));
    std::sort(pairs.begin(), pairs.end());
    st.out.resize(size_t(S));
    st.in.resize(size_t(S));
    for (size_t i = 0; i < pairs.size();) {
      size_t j = i;
      while (j < pairs.size() && pairs[j] == pairs[i]) ++j;
      int32_t a = int32_t(pairs[i] / uint64_t(S)), b = int32_t(pairs[i] % uint64_t(S));
      st.out[size_t(a)].push_back({b, double(j - i)});
      st.in[size_t(b)].push_back({a, double(j - i)});
      i = j;
    }
  }
  const auto& pr = prior.ranked();
  st.prior_rank.assign(size_t(vocab), 0);
  for (size_t r = 0; r < pr.size(); ++r) st.prior_rank[size_t(pr[r])] = int32_t(r);
  st.m.resize(size_t(S));
  st.owner.assign(size_t(vocab), -1);
  for (int32_t s = 0; s < S; ++s) {  // TFMA start
    st.m[size_t(s)] = pr[size_t(s)];
    st.owner[size_t(pr[size_t(s)])] = s;
  }
  double ll = st.total_loglik();
  if (stats) stats->loglik_start = ll;

  // Phase 1: greedy sweeps. Symbols in traffic-frequency order; for each, the best of the moves
  // to the `sweep_window` nearest prior ranks (a swap with the symbol holding that id, or a move to
  // a free id) is taken when it raises the likelihood. Solving the frequent symbols first is
  // what makes the rest identifiable, as in hand-solving a cipher.
  const int64_t V = int64_t(pr.size());
  int64_t sweeps = 0, sweep_moves = 0;
  {
    const double deadline = opt.seconds * std::clamp(opt.sweep_share, 0.0, 1.0);
    bool out_of_time = false;
    for (int pass = 0; pass < opt.max_sweeps && !out_of_time; ++pass) {
      double gain = 0;
      for (int32_t a = 0; a < S; ++a) {
        if ((a & 31) == 0 && since(t0) > deadline) {
          out_of_time = true;
          break;
        }
        const int32_t ya = st.m[size_t(a)];
        double best_d = 1e-9;
        int32_t best_y = -1;
        nearest_ranks(st.prior_rank[size_t(ya)], V, opt.sweep_window + 1, [&](int64_t q) {
          const int32_t y = pr[size_t(q)];
          if (y == ya) return;
          const int32_t b = st.owner[size_t(y)];
          int32_t A[2] = {a, b};
          const int na = b >= 0 ? 2 : 1;
          const double before = st.edge_sum(A, na);
          st.m[size_t(a)] = y;
          if (b >= 0) st.m[size_t(b)] = ya;
          const double d = st.edge_sum(A, na) - before;
          st.m[size_t(a)] = ya;
          if (b >= 0) st.m[size_t(b)] = y;
          if (d > best_d) {
            best_d = d;
            best_y = y;
          }
        });
        if (best_y >= 0) {
          const int32_t b = st.owner[size_t(best_y)];
          st.m[size_t(a)] = best_y;
          if (b >= 0) st.m[size_t(b)] = ya;
          st.owner[size_t(best_y)] = a;
          st.owner[size_t(ya)] = b;
          ll += best_d;
          gain += best_d;
          ++sweep_moves;
        }
      }
      ++sweeps;
      if (gain <= 1e-6 * std::fabs(ll)) break;
    }
  }
  if (stats) {
    stats->sweeps = sweeps;
    stats->sweep_moves = sweep_moves;
    stats->loglik_sweeps = ll;
  }

  // Phase 2: simulated annealing in the remaining time.
  std::mt19937_64 rng(opt.seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::normal_distribution<double> N(0.0, 1.0);
  std::vector<double> cum(static_cast<size_t>(S));  // frequency-weighted symbol choice
  {  // symbols drawn with probability ~ count^w: the frequent ones carry the recovery but their
     // proposals cost their (large) number of distinct neighbours
    double acc = 0;
    for (int32_t s2 = 0; s2 < S; ++s2) cum[size_t(s2)] = (acc += std::sqrt(st.cnt[size_t(s2)]));
  }
  std::vector<int32_t> best_m = st.m;
  double best_ll = ll;
  int64_t it = 0, acc = 0;
  // temperatures are per traffic bigram: the log-likelihood grows with the traffic size
  double nbig = 0;
  for (const auto& e : st.out)
    for (const auto& x : e) nbig += x.n;
  nbig = std::max(1.0, nbig);
  double T = opt.t_start * nbig, progress = 0;
  int cur_round = 0;
  const double sa_start = since(t0), sa_seconds = std::max(0.0, opt.seconds - sa_start);
  for (;; ++it) {
    if ((it & 255) == 0) {
      double el = since(t0) - sa_start;
      progress = sa_seconds > 0 ? el / sa_seconds : 1.0;
      if (opt.max_iters >= 0) progress = std::max(progress, double(it) / double(std::max<int64_t>(1, opt.max_iters)));
      if (progress >= 1.0) break;
      // `rounds` annealing schedules in a row; each new round restarts from the best mapping
      const int rounds = std::max(1, opt.rounds);
      const int round = std::min(rounds - 1, int(progress * rounds));
      const double frac = progress * rounds - round;
      T = nbig * opt.t_start * std::pow(opt.t_end / opt.t_start, frac);
      if (((it & 4095) == 0 || round != cur_round) && ll > best_ll) {
        best_ll = ll;
        best_m = st.m;
      }
      if (round != cur_round) {
        cur_round = round;
        st.m = best_m;
        ll = best_ll;
        std::fill(st.owner.begin(), st.owner.end(), -1);
        for (int32_t s2 = 0; s2 < S; ++s2) st.owner[size_t(st.m[size_t(s2)])] = s2;
      }
    }
    // symbol: probability ~ sqrt(traffic count)
    int32_t a = int32_t(std::upper_bound(cum.begin(), cum.end(), U(rng) * cum.back()) - cum.begin());
    if (a >= S) a = S - 1;
    // candidate plaintext id: a prior rank near the current one (log-normal jump + jitter)
    const int64_t rho = st.prior_rank[size_t(st.m[size_t(a)])];
    const double sigma = U(rng) < 0.8 ? 0.5 : 2.0;  // mostly local, sometimes far
    int64_t rho2 = int64_t(std::llround(double(rho + 1) * std::exp(sigma * N(rng)) - 1.0 + (U(rng) * 6.0 - 3.0)));
    rho2 = std::clamp<int64_t>(rho2, 0, V - 1);
    if (rho2 == rho) continue;
    const int32_t y = pr[size_t(rho2)];
    const int32_t b = st.owner[size_t(y)];
    const int32_t ya = st.m[size_t(a)];
    int32_t A[2] = {a, b};
    const int na = b >= 0 ? 2 : 1;
    const double before = st.edge_sum(A, na);
    st.m[size_t(a)] = y;
    if (b >= 0) st.m[size_t(b)] = ya;
    const double after = st.edge_sum(A, na);
    const double delta = after - before;
    if (delta >= 0 || U(rng) < std::exp(delta / T)) {
      ++acc;
      ll += delta;
      st.owner[size_t(y)] = a;
      st.owner[size_t(ya)] = b;  // -1 when y was free
    } else {
      st.m[size_t(a)] = ya;
      if (b >= 0) st.m[size_t(b)] = y;
    }
  }
  if (ll >= best_ll) {
    best_ll = ll;
    best_m = st.m;
  }
  st.m = best_m;
  std::fill(st.owner.begin(), st.owner.end(), -1);
  for (int32_t s = 0; s < S; ++s) st.owner[size_t(st.m[size_t(s)])] = s;
  if (stats) {
    stats->proposals = it;
    stats->accepted = acc;
    stats->loglik_end = st.total_loglik();
  }
  // Candidates: the annealed id first, then the prior ids of the nearest ranks ordered by the
  // local likelihood with every other symbol fixed.
  const int k = std::max(1, opt.k);
  std::vector<std::pair<double, int32_t>> cand;
  for (int32_t s = 0; s < S; ++s) {
    auto& c = g[size_t(st.sym_id[size_t(s)])];
    const int32_t y0 = st.m[size_t(s)];
    c.push_back(y0);
    if (k == 1) continue;
    cand.clear();
    nearest_ranks(st.prior_rank[size_t(y0)], V, k, [&](int64_t q) {
      int32_t y = pr[size_t(q)];
      if (y != y0) cand.push_back({st.local(s, y), y});
    });
    std::stable_sort(cand.begin(), cand.end(), [](auto& p, auto& q) { return p.first > q.first; });
    for (size_t i = 0; i < cand.size() && c.size() < size_t(k); ++i) c.push_back(cand[i].second);
  }
  return g;
}

namespace {

// Candidates over symbols -> candidates over plaintext ids (first occurrence kept).
Guesses to_plain(const Guesses& g, const std::vector<int32_t>& symbol_to_plain) {
  Guesses out(g.size());
  for (size_t i = 0; i < g.size(); ++i)
    for (int32_t s : g[i]) {
      const int32_t t = s >= 0 && size_t(s) < symbol_to_plain.size() ? symbol_to_plain[size_t(s)] : -1;
      if (t >= 0 && std::find(out[i].begin(), out[i].end(), t) == out[i].end()) out[i].push_back(t);
    }
  return out;
}

}  // namespace

void score_stream_guesses(const StreamAttackInputs& in, const Guesses& g_in, AttackResult& r) {
  if (in.truth.empty()) return;
  const Guesses mapped = in.symbol_to_plain.empty() ? Guesses() : to_plain(g_in, in.symbol_to_plain);
  const Guesses& g = in.symbol_to_plain.empty() ? g_in : mapped;
  if (in.truth.size() != in.traffic.size()) throw Error("stream audit", "truth and traffic differ in length", kExitError);
  std::vector<uint8_t> unscored(size_t(in.vocab_size), 0);
  for (int32_t id : in.unscored_plain_ids)
    if (id >= 0 && id < in.vocab_size) unscored[size_t(id)] = 1;
  const bool pii = !in.pii_mask.empty();
  const bool items = !in.pii_item.empty();
  int64_t kind_n[5] = {0, 0, 0, 0, 0}, kind_hit[5] = {0, 0, 0, 0, 0};
  std::map<std::pair<int64_t, int32_t>, int> item_ok;
  std::vector<int64_t> hits_k(in.ks.size(), 0);
  int64_t n = 0, hit1 = 0, npii = 0, hitpii = 0;
  std::vector<int64_t> obf_count(size_t(in.vocab_size), 0);
  std::vector<uint8_t> obf_right(size_t(in.vocab_size), 0);
  std::vector<TokenSeq> hyp(in.traffic.size()), ref(in.traffic.size());
  double cos_sum = 0;
  int64_t cos_n = 0;
  for (size_t s = 0; s < in.traffic.size(); ++s) {
    const auto& t = in.traffic[s];
    const auto& tr = in.truth[s];
    if (tr.size() != t.size()) throw Error("stream audit", "truth and traffic differ in length", kExitError);
    for (size_t i = 0; i < t.size(); ++i) {
      if (unscored[size_t(tr[i])]) continue;
      const auto& c = g[size_t(t[i])];
      const bool right = !c.empty() && c[0] == tr[i];
      ++n;
      hit1 += right;
      for (size_t q = 0; q < in.ks.size(); ++q) {
        size_t kk = std::min(c.size(), size_t(std::max(0, in.ks[q])));
        hits_k[q] += std::find(c.begin(), c.begin() + ptrdiff_t(kk), tr[i]) != c.begin() + ptrdiff_t(kk);
      }
      if (pii && in.pii_mask[s][i]) {
        ++npii;
        hitpii += right;
        const size_t kd = std::min<size_t>(in.pii_mask[s][i], 5) - 1;
        ++kind_n[kd];
        kind_hit[kd] += right;
      }
      if (items && in.pii_item[s][i] > 0) {
        auto& it = item_ok[{int64_t(s), in.pii_item[s][i]}];
        it = (it == 0 ? 1 : it) & (right ? 1 : 2);  // 1 = all right so far, 2 = a miss
      }
      ++obf_count[size_t(t[i])];
      obf_right[size_t(t[i])] = right;
      hyp[s].push_back(c.empty() ? -1 : c[0]);
      ref[s].push_back(tr[i]);
    }
    if (!ref[s].empty()) {
      cos_sum += bag_cosine(hyp[s], ref[s]);
      ++cos_n;
    }
  }
  r.victim_tokens = n;
  r.ttrsr = n ? double(hit1) / double(n) : 0.0;
  r.topk.clear();
  for (size_t q = 0; q < in.ks.size(); ++q) r.topk.push_back({in.ks[q], n ? double(hits_k[q]) / double(n) : 0.0});
  std::vector<int32_t> obs;
  for (int32_t id = 0; id < in.vocab_size; ++id)
    if (obf_count[size_t(id)] > 0) obs.push_back(id);
  std::stable_sort(obs.begin(), obs.end(), [&](int32_t a, int32_t b) { return obf_count[size_t(a)] > obf_count[size_t(b)]; });
  int64_t right_types = 0;
  for (int32_t id : obs) right_types += obf_right[size_t(id)];
  r.vocab_recovery = obs.empty() ? 0.0 : double(right_types) / double(obs.size());
  for (size_t top : {size_t(10), size_t(100), size_t(1000)}) {
    size_t m = std::min(top, obs.size()), ok = 0;
    for (size_t i = 0; i < m; ++i) ok += obf_right[size_t(obs[i])];
    r.details["top" + std::to_string(top) + "_vocab"] = m ? double(ok) / double(m) : 0.0;
  }
  r.details["distinct_ids"] = obs.size();
  r.pii_recovery = pii ? (npii ? double(hitpii) / double(npii) : 0.0) : -1.0;
  if (pii) {
    r.details["pii_tokens"] = npii;
    nlohmann::json bk = nlohmann::json::object();
    for (int kd = 0; kd < 4; ++kd)
      if (kind_n[kd] > 0)
        bk[pii_kind_name(PiiKind(kd))] = {{"tokens", kind_n[kd]}, {"recovered", double(kind_hit[kd]) / double(kind_n[kd])}};
    if (kind_n[4] > 0) bk["other"] = {{"tokens", kind_n[4]}, {"recovered", double(kind_hit[4]) / double(kind_n[4])}};
    r.details["pii_by_kind"] = bk;
  }
  if (items) {
    int64_t all_right = 0;
    for (auto& [k, v] : item_ok) all_right += (v == 1);
    r.details["pii_items"] = item_ok.size();
    r.details["pii_items_recovered"] = item_ok.empty() ? 0.0 : double(all_right) / double(item_ok.size());
  }
  r.bleu4 = corpus_bleu4(hyp, ref);
  r.cosine = cos_n ? cos_sum / double(cos_n) : 0.0;
}

namespace {

// The traffic with every symbol replaced by its group, groups numbered densely in order of first
// occurrence (a symbol without a group is its own); label_of[symbol] = that number, -1 if unseen.
std::vector<TokenSeq> merge_groups(const StreamAttackInputs& in, std::vector<int32_t>& label_of, int32_t& labels) {
  if (in.symbol_group.size() != size_t(in.vocab_size))
    throw Error("stream audit", "the copy grouping covers " + std::to_string(in.symbol_group.size()) +
                                    " ids, the traffic's vocabulary is " + std::to_string(in.vocab_size), kExitError);
  if (!in.symbol_to_plain.empty())
    throw Error("stream audit", "a copy grouping and a symbol map cannot be combined", kExitError);
  label_of.assign(size_t(in.vocab_size), -1);
  std::unordered_map<int64_t, int32_t> of_group;  // group (or -1 - symbol when alone) -> label
  std::vector<TokenSeq> merged = in.traffic;
  labels = 0;
  for (auto& d : merged)
    for (auto& t : d) {
      const int32_t g = in.symbol_group[size_t(t)];
      const int64_t key = g >= 0 ? int64_t(g) : -1 - int64_t(t);
      auto [it, fresh] = of_group.emplace(key, labels);
      if (fresh) ++labels;
      label_of[size_t(t)] = it->second;
      t = it->second;
    }
  return merged;
}

// Candidates of the merged stream's labels -> candidates of every symbol of the traffic.
Guesses expand_groups(const Guesses& by_label, const std::vector<int32_t>& label_of) {
  Guesses g(label_of.size());
  for (size_t s = 0; s < label_of.size(); ++s)
    if (label_of[s] >= 0 && size_t(label_of[s]) < by_label.size()) g[s] = by_label[size_t(label_of[s])];
  return g;
}

}  // namespace

std::vector<AttackResult> run_stream_attacks(const StreamAttackInputs& in) {
  if (in.vocab_size <= 0) throw Error("stream audit", "vocabulary size must be positive", kExitError);
  std::vector<AttackResult> out;
  int kmax = 1;
  for (int k : in.ks) kmax = std::max(kmax, k);
  int64_t ntok = 0;
  for (const auto& s : in.traffic) ntok += int64_t(s.size());
  // With the attacker's copy grouping, the attacks read the merged stream over the priors' ids.
  const bool grouped = !in.symbol_group.empty();
  std::vector<int32_t> label_of;
  int32_t labels = 0;
  const std::vector<TokenSeq> merged = grouped ? merge_groups(in, label_of, labels) : std::vector<TokenSeq>();
  const std::vector<TokenSeq>& attacked = grouped ? merged : in.traffic;
  for (const auto& p : in.priors) {
    const int32_t vocab = grouped ? p.model.vocab() : in.vocab_size;
    if (grouped && labels > vocab)
      throw Error("stream audit", "the copy grouping leaves " + std::to_string(labels) +
                                      " distinct symbols in the traffic, more than the prior's vocabulary (" +
                                      std::to_string(vocab) + ")", kExitError);
    auto answer = [&](const Guesses& g) { return grouped ? expand_groups(g, label_of) : g; };
    {
      AttackResult r;
      r.attack = "TFMA";
      r.setting = "prior: " + p.name;
      auto t0 = Clock::now();
      auto g = answer(tfma(attacked, p.model, vocab, kmax));
      r.seconds = since(t0);
      r.victim_tokens = ntok;
      r.details = {{"victim", in.victim_name}, {"traffic_tokens", ntok}, {"prior_tokens", p.model.tokens()}};
      score_stream_guesses(in, g, r);
      out.push_back(std::move(r));
    }
    if (in.run_sda) {
      AttackResult r;
      r.attack = "SDA";
      r.setting = "prior: " + p.name;
      auto t0 = Clock::now();
      SdaOptions o = in.sda;
      o.k = kmax;
      SdaStats st;
      auto g = answer(sda(attacked, p.model, vocab, o, &st));
      r.seconds = since(t0);
      r.victim_tokens = ntok;
      r.details = {{"victim", in.victim_name}, {"traffic_tokens", ntok}, {"prior_tokens", p.model.tokens()},
                   {"budget_s", o.seconds}, {"proposals", st.proposals}, {"accepted", st.accepted},
                   {"loglik_tfma", st.loglik_start}, {"loglik_sweeps", st.loglik_sweeps},
                   {"loglik_sda", st.loglik_end}, {"sweeps", st.sweeps}, {"sweep_moves", st.sweep_moves},
                   {"search", {{"seconds", o.seconds}, {"max_iters", o.max_iters}, {"rounds", o.rounds},
                               {"max_sweeps", o.max_sweeps}, {"sweep_window", o.sweep_window},
                               {"sweep_share", o.sweep_share}, {"t_start", o.t_start}, {"t_end", o.t_end},
                               {"seed", o.seed}}}};
      // The same objective at the true mapping: how far the search got (undefined when the
      // attack runs over symbols, e.g. homophone copies the prior's simulation labels its own way,
      // or over the attacker's groups, which are another stream than the truth unless exact).
      if (!in.truth.empty() && in.symbol_to_plain.empty() && !grouped) {
        double llt = 0;
        for (const auto& d : in.truth)
          for (size_t i = 1; i < d.size(); ++i) llt += p.model.logp(d[i - 1], d[i]);
        r.details["loglik_truth"] = llt;
      }
      score_stream_guesses(in, g, r);
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace aloepri::audit
