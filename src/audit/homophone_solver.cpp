// Many-to-one deciphering of a homophonic stream (see the header).
#include "aloepri/audit/homophone_solver.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "aloepri/core/error.h"
#include "weight_internal.h"

namespace aloepri::audit {

namespace {

// Neighbour counts of every symbol in CSR form: for symbol s, entries at [start[s], start[s+1])
// are (neighbour, count); neighbour -1 = the start of a request (left lists only).
struct Adjacency {
  std::vector<int64_t> start;
  std::vector<int32_t> other;
  std::vector<int32_t> count;
};
Adjacency adjacency(std::vector<std::pair<int32_t, int32_t>> pairs, int32_t symbols) {
  std::sort(pairs.begin(), pairs.end());
  Adjacency a;
  a.start.assign(size_t(symbols) + 1, 0);
  for (size_t i = 0; i < pairs.size();) {
    size_t j = i;
    while (j < pairs.size() && pairs[j] == pairs[i]) ++j;
    a.other.push_back(pairs[i].second);
    a.count.push_back(int32_t(j - i));
    ++a.start[size_t(pairs[i].first) + 1];
    i = j;
  }
  for (int32_t s = 0; s < symbols; ++s) a.start[size_t(s) + 1] += a.start[size_t(s)];
  return a;
}

// log of the expected count of one copy of t: N P(t) / c_t (P with add-1/2, as the prior's unigram).
std::vector<double> copy_lambda(const BigramModel& prior, const std::vector<int64_t>& copies, int64_t N) {
  const int32_t V = prior.vocab();
  require(int64_t(copies.size()) == V, "many-to-one solver",
          "the copy table has " + std::to_string(copies.size()) + " entries, the prior's vocabulary " + std::to_string(V));
  const double total = prior.tokens() + 0.5 * double(V);
  std::vector<double> lambda(static_cast<size_t>(V));
  for (int32_t t = 0; t < V; ++t) {
    require(copies[size_t(t)] >= 1, "many-to-one solver", "token " + std::to_string(t) + " has no copy");
    lambda[size_t(t)] = double(N) * (prior.unigram_count(t) + 0.5) / total / double(copies[size_t(t)]);
  }
  return lambda;
}

double objective(const std::vector<TokenSeq>& traffic, const BigramModel& prior, const std::vector<double>& lambda,
                 const std::vector<int64_t>& n, const std::vector<int32_t>& f, double count_weight) {
  double v = 0;
  for (size_t s = 0; s < n.size(); ++s)
    if (n[s] > 0) v += count_weight * (double(n[s]) * std::log(lambda[size_t(f[s])]) - lambda[size_t(f[s])]);
  for (const TokenSeq& q : traffic)
    for (size_t i = 0; i < q.size(); ++i)
      v += i == 0 ? prior.log_unigram(f[size_t(q[i])]) : prior.logp(f[size_t(q[i - 1])], f[size_t(q[i])]);
  return v;
}

std::vector<int64_t> symbol_counts(const std::vector<TokenSeq>& traffic, int32_t symbols) {
  std::vector<int64_t> n(static_cast<size_t>(symbols), 0);
  for (const TokenSeq& q : traffic)
    for (int32_t x : q) {
      require(x >= 0 && x < symbols, "many-to-one solver", "symbol " + std::to_string(x) + " out of range");
      ++n[size_t(x)];
    }
  return n;
}

// The soft start: EM over the channel P(symbol | token) on the traffic's bigram types, each
// (s1, s2) seen m times an independent draw of P(t1) P(t2 | t1) P(s1 | t1) P(s2 | t2) with t1, t2
// among the symbols' candidates (Knight et al.'s decipherment, on bigram types so that a step
// costs the distinct bigrams times the candidate pairs, not the traffic times V^2). Initial
// channel: the Poisson fit of each symbol's count to each candidate's expected copy count. After
// each step the candidates are cut to the `keep` most probable; returns each symbol's expected
// counts per remaining candidate (cand is reordered to match, most probable first).
std::vector<std::vector<double>> em_channel(const Adjacency& R, std::vector<std::vector<int32_t>>& cand,
                                            const std::vector<int64_t>& n, const std::vector<double>& lambda,
                                            const BigramModel& prior, int iters, int keep) {
  const size_t S = cand.size(), V = lambda.size();
  std::vector<std::vector<double>> theta(S), C(S);
  std::vector<double> tot(V);
  auto normalise = [&](const std::vector<std::vector<double>>& w) {  // theta = w / (sum over symbols per token)
    std::fill(tot.begin(), tot.end(), 0.0);
    for (size_t s = 0; s < S; ++s)
      for (size_t k = 0; k < cand[s].size(); ++k) tot[size_t(cand[s][k])] += w[s][k];
    for (size_t s = 0; s < S; ++s) {
      theta[s].resize(cand[s].size());
      for (size_t k = 0; k < cand[s].size(); ++k) {
        const double z = tot[size_t(cand[s][k])];
        theta[s][k] = z > 0 ? w[s][k] / z : 0.0;
      }
    }
  };
  for (size_t s = 0; s < S; ++s) {
    C[s].resize(cand[s].size());
    for (size_t k = 0; k < cand[s].size(); ++k) {
      const double l = lambda[size_t(cand[s][k])];
      C[s][k] = std::exp(double(n[s]) * std::log(l) - l - std::lgamma(double(n[s]) + 1.0));
    }
  }
  normalise(C);
  std::vector<double> M, row, col;
  for (int it = 0; it < iters; ++it) {
    for (auto& c : C) std::fill(c.begin(), c.end(), 0.0);
    for (size_t s1 = 0; s1 < S; ++s1)
      for (int64_t e = R.start[s1]; e < R.start[s1 + 1]; ++e) {
        const size_t s2 = size_t(R.other[size_t(e)]);
        const double m = R.count[size_t(e)];
        const auto &c1 = cand[s1], &c2 = cand[s2];
        row.assign(c1.size(), 0.0), col.assign(c2.size(), 0.0);
        double Z = 0;
        for (size_t a = 0; a < c1.size(); ++a) {
          if (theta[s1][a] <= 0) continue;
          const double pa = std::exp(prior.log_unigram(c1[a])) * theta[s1][a];
          for (size_t b = 0; b < c2.size(); ++b) {
            if (theta[s2][b] <= 0) continue;
            const double v = pa * std::exp(prior.logp(c1[a], c2[b])) * theta[s2][b];
            row[a] += v, col[b] += v, Z += v;
          }
        }
        if (!(Z > 0)) continue;
        for (size_t a = 0; a < c1.size(); ++a) C[s1][a] += m * row[a] / Z;
        for (size_t b = 0; b < c2.size(); ++b) C[s2][b] += m * col[b] / Z;
      }
    // keep the most probable candidates, best first
    for (size_t s = 0; s < S; ++s) {
      std::vector<size_t> idx(cand[s].size());
      std::iota(idx.begin(), idx.end(), size_t(0));
      std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return C[s][a] > C[s][b]; });
      if (idx.size() > size_t(keep)) idx.resize(size_t(keep));
      std::vector<int32_t> nc;
      std::vector<double> ncount;
      for (size_t i : idx) nc.push_back(cand[s][i]), ncount.push_back(C[s][i]);
      cand[s] = std::move(nc), C[s] = std::move(ncount);
    }
    normalise(C);
  }
  return C;
}

}  // namespace

double many_to_one_objective(const std::vector<TokenSeq>& traffic, int32_t symbols, const BigramModel& prior,
                             const std::vector<int64_t>& copies, const std::vector<int32_t>& f, double count_weight) {
  const std::vector<int64_t> n = symbol_counts(traffic, symbols);
  require(int64_t(f.size()) >= symbols, "many-to-one solver", "the assignment does not cover every symbol");
  for (int32_t s = 0; s < symbols; ++s)
    require(n[size_t(s)] == 0 || (f[size_t(s)] >= 0 && f[size_t(s)] < prior.vocab()), "many-to-one solver",
            "symbol " + std::to_string(s) + " has no plaintext id");
  return objective(traffic, prior, copy_lambda(prior, copies, std::accumulate(n.begin(), n.end(), int64_t(0))), n, f,
                   count_weight);
}

nlohmann::json ManyToOneStats::to_json() const {
  return {{"symbols_seen", symbols_seen}, {"sweeps", sweeps},           {"moves", moves},
          {"anneal_proposals", anneal_proposals}, {"anneal_accepted", anneal_accepted},
          {"loglik_start", loglik_start}, {"loglik_end", loglik_end}, {"seconds", seconds}};
}

Guesses solve_many_to_one(const std::vector<TokenSeq>& traffic, int32_t symbols, const BigramModel& prior,
                          const std::vector<int64_t>& copies, const ManyToOneOptions& opt, ManyToOneStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t V = prior.vocab();
  require(opt.window >= 1 && opt.k >= 1, "many-to-one solver", "window and k must be positive");
  // Counts and neighbours.
  const std::vector<int64_t> n = symbol_counts(traffic, symbols);
  const int64_t N = std::accumulate(n.begin(), n.end(), int64_t(0));
  std::vector<std::pair<int32_t, int32_t>> lp, rp;
  for (const TokenSeq& q : traffic)
    for (size_t i = 0; i < q.size(); ++i) {
      lp.push_back({q[i], i == 0 ? -1 : q[i - 1]});
      if (i + 1 < q.size()) rp.push_back({q[i], q[i + 1]});
    }
  const Adjacency L = adjacency(std::move(lp), symbols), R = adjacency(std::move(rp), symbols);
  const std::vector<double> lambda = copy_lambda(prior, copies, N);
  std::vector<double> loglambda(lambda.size());
  for (size_t t = 0; t < lambda.size(); ++t) loglambda[t] = std::log(lambda[t]);
  // Copy slots by expected count, largest first; symbols seen, by count.
  std::vector<int32_t> slots;
  for (int32_t t = 0; t < V; ++t) slots.insert(slots.end(), size_t(copies[size_t(t)]), t);
  std::stable_sort(slots.begin(), slots.end(), [&](int32_t a, int32_t b) { return lambda[size_t(a)] > lambda[size_t(b)]; });
  std::vector<int32_t> seen;
  for (int32_t s = 0; s < symbols; ++s)
    if (n[size_t(s)] > 0) seen.push_back(s);
  std::stable_sort(seen.begin(), seen.end(), [&](int32_t a, int32_t b) { return n[size_t(a)] > n[size_t(b)]; });
  // Start, and each symbol's candidates: the distinct tokens of the slots nearest its rank.
  std::vector<int32_t> f(static_cast<size_t>(symbols), -1);
  std::vector<std::vector<int32_t>> cand(static_cast<size_t>(symbols));
  std::vector<int64_t> mark(static_cast<size_t>(V), -1);
  for (size_t r = 0; r < seen.size(); ++r) {
    const int32_t s = seen[r];
    const int64_t at = std::min<int64_t>(int64_t(r), int64_t(slots.size()) - 1);
    f[size_t(s)] = slots[size_t(at)];
    auto& c = cand[size_t(s)];
    for (int64_t d = 0; int64_t(c.size()) < opt.window && (at - d >= 0 || at + d < int64_t(slots.size())); ++d)
      for (int64_t i : {at - d, at + d})
        if (i >= 0 && i < int64_t(slots.size()) && mark[size_t(slots[size_t(i)])] != int64_t(r) &&
            int64_t(c.size()) < opt.window) {
          mark[size_t(slots[size_t(i)])] = int64_t(r);
          c.push_back(slots[size_t(i)]);
        }
  }
  if (opt.em_iters > 0) {
    em_channel(R, cand, n, lambda, prior, opt.em_iters, opt.em_keep);
    // Start from the channel's best reading of each symbol, within the copy table's capacity:
    // the most frequent symbols choose first, a full token passes a symbol to its next candidate.
    std::vector<int64_t> used(static_cast<size_t>(V), 0);
    for (int32_t s : seen) {
      f[size_t(s)] = -1;
      for (int32_t x : cand[size_t(s)])
        if (used[size_t(x)] < copies[size_t(x)]) {
          f[size_t(s)] = x;
          break;
        }
      if (f[size_t(s)] < 0)  // every candidate full: any token with room (there are n' >= seen slots)
        for (int32_t t = 0; t < V && f[size_t(s)] < 0; ++t)
          if (used[size_t(t)] < copies[size_t(t)]) f[size_t(s)] = t;
      ++used[size_t(f[size_t(s)])];
      if (std::find(cand[size_t(s)].begin(), cand[size_t(s)].end(), f[size_t(s)]) == cand[size_t(s)].end())
        cand[size_t(s)].push_back(f[size_t(s)]);
    }
  }
  // The objective's part that depends on f(s) = x, the other symbols as they are.
  auto score = [&](int32_t s, int32_t x) {
    double v = opt.count_weight * (double(n[size_t(s)]) * loglambda[size_t(x)] - lambda[size_t(x)]);
    for (int64_t e = L.start[size_t(s)]; e < L.start[size_t(s) + 1]; ++e) {
      const int32_t l = L.other[size_t(e)];
      v += L.count[size_t(e)] * (l < 0 ? prior.log_unigram(x) : prior.logp(l == s ? x : f[size_t(l)], x));
    }
    for (int64_t e = R.start[size_t(s)]; e < R.start[size_t(s) + 1]; ++e)
      if (R.other[size_t(e)] != s) v += R.count[size_t(e)] * prior.logp(x, f[size_t(R.other[size_t(e)])]);
    return v;
  };
  ManyToOneStats st;
  st.symbols_seen = int64_t(seen.size());
  st.loglik_start = objective(traffic, prior, lambda, n, f, opt.count_weight);
  // Capacity: the public table gives token t exactly c_t copies, so at most c_t symbols take t.
  // A move to a full token swaps with one of its symbols (the one given, or a random one).
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(V));
  std::vector<int32_t> pos(static_cast<size_t>(symbols), -1);
  for (int32_t s : seen) pos[size_t(s)] = int32_t(members[size_t(f[size_t(s)])].size()), members[size_t(f[size_t(s)])].push_back(s);
  auto assign = [&](int32_t s, int32_t x) {  // f[s] = x, keeping members/pos
    auto& from = members[size_t(f[size_t(s)])];
    const int32_t last = from.back();
    from[size_t(pos[size_t(s)])] = last, pos[size_t(last)] = pos[size_t(s)], from.pop_back();
    pos[size_t(s)] = int32_t(members[size_t(x)].size()), members[size_t(x)].push_back(s);
    f[size_t(s)] = x;
  };
  std::mt19937_64 rng(opt.seed);
  // The gain of moving s to x (swapping with `other` when x is full; -1: pick one at random);
  // applies it when `apply`, else leaves f as it was. Returns the gain and the symbols moved.
  auto try_move = [&](int32_t s, int32_t x, bool apply_if_positive, double T, std::uniform_real_distribution<double>* U) {
    const int32_t cur = f[size_t(s)];
    const bool full = int64_t(members[size_t(x)].size()) >= copies[size_t(x)];
    const int32_t o = full ? members[size_t(x)][size_t(rng() % members[size_t(x)].size())] : -1;
    double gain = score(s, x) - score(s, cur);
    f[size_t(s)] = x;  // the second half sees the first (they may be neighbours)
    if (o >= 0) gain += score(o, cur) - score(o, x);
    f[size_t(s)] = cur;
    const double occ = double(n[size_t(s)] + (o >= 0 ? n[size_t(o)] : 0));
    const bool take = apply_if_positive ? gain > 1e-9 : (gain >= 0 || (*U)(rng) < std::exp(gain / (T * occ)));
    if (take) {
      assign(s, x);
      if (o >= 0) assign(o, cur);
    }
    return take;
  };
  auto sweeps = [&](double until) {
    for (int sweep = 0; sweep < opt.max_sweeps && internal::seconds_since(t0) < until; ++sweep) {
      int64_t moved = 0;
      for (int32_t s : seen)
        for (int32_t x : cand[size_t(s)])
          if (x != f[size_t(s)] && try_move(s, x, true, 0, nullptr)) ++moved;
      ++st.sweeps;
      st.moves += moved;
      if (moved == 0) break;
    }
  };
  sweeps(opt.seconds);
  // Greedy moves stall where a copy's neighbours are themselves still wrong; annealing (the same
  // moves, Metropolis at a temperature per occurrence of the symbols moved, geometric from
  // t_start to t_end) lets groups of symbols change together, then greedy sweeps again.
  if (opt.anneal_steps > 0 && !seen.empty() && opt.max_sweeps > 0) {
    std::uniform_real_distribution<double> U(0, 1);
    const int64_t steps = opt.anneal_steps * int64_t(seen.size());
    for (int64_t i = 0; i < steps && internal::seconds_since(t0) < opt.seconds; ++i) {
      const int32_t s = seen[size_t(rng() % seen.size())];
      const auto& c = cand[size_t(s)];
      const int32_t x = c[size_t(rng() % c.size())];
      if (x == f[size_t(s)]) continue;
      const double T = opt.t_start * std::pow(opt.t_end / opt.t_start, double(i) / double(steps));
      st.anneal_accepted += try_move(s, x, false, T, &U);
      ++st.anneal_proposals;
    }
    sweeps(opt.seconds * 2);  // the final greedy pass finishes even past the budget's first half
  }
  st.loglik_end = objective(traffic, prior, lambda, n, f, opt.count_weight);
  // The answer: every seen symbol's candidates ranked by its final score.
  Guesses g(static_cast<size_t>(symbols));
  for (int32_t s : seen) {
    std::vector<std::pair<double, int32_t>> sc;
    bool has_cur = false;
    for (int32_t x : cand[size_t(s)]) sc.push_back({score(s, x), x}), has_cur |= x == f[size_t(s)];
    if (!has_cur) sc.push_back({score(s, f[size_t(s)]), f[size_t(s)]});
    const size_t k = std::min(sc.size(), size_t(opt.k));
    std::partial_sort(sc.begin(), sc.begin() + long(k), sc.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t i = 0; i < k; ++i) g[size_t(s)].push_back(sc[i].second);
  }
  st.seconds = internal::seconds_since(t0);
  if (stats) *stats = st;
  return g;
}

}  // namespace aloepri::audit
