// A traffic-only attacker against a homophonic vocabulary (issue 14): many-to-one substitution
// deciphering, as for homophonic ciphers. The server-side observer that does not use the weights
// sees a stream of symbols (copies); it knows the public copy table (c_t copies of plaintext id
// t) and a plaintext prior (bigram model). It assigns every symbol a plaintext id, many to one,
// maximising
//     sum over traffic bigrams (s, s') of log P(f(s') | f(s))          (the prior's bigram model;
//                                                                       log P(f(s)) at a start)
//   + count_weight * sum over symbols of log Poisson(n_s | N P(f(s)) / c_f(s))
// where n_s is the symbol's count and N the traffic's length: a copy of t occurs about
// N P(t) / c_t times, and no token takes more symbols than it has copies. Start: symbols by count
// matched to copy slots by expected count (what frequency matching over copies does), refined by
// EM over the channel P(symbol | token) on the traffic's bigram types; then greedy sweeps: each symbol, most frequent first,
// moves to the best of `window` candidate tokens around its count rank given its neighbours'
// current ids, until a sweep moves nothing or max_sweeps; then simulated annealing over the same
// moves and greedy sweeps again, within the time budget. Unlike SDA over
// copies (an injective map over the copy alphabet) several symbols may take one token, and
// unlike grouping-then-SDA the grouping and the deciphering are one search.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/audit/metrics.h"
#include "aloepri/audit/stream_attacks.h"

namespace aloepri::audit {

struct ManyToOneOptions {
  int window = 100;          // distinct candidate tokens per symbol, around its count rank
  int max_sweeps = 30;
  double seconds = 60.0;     // time budget of the sweeps
  double count_weight = 1.0;
  int k = 10;                // candidates per symbol in the result, best first
  // annealing after the first sweeps: anneal_steps proposals per symbol seen, temperature
  // geometric from t_start to t_end (objective units per occurrence of the symbol moved), then
  // greedy sweeps again (0 = none)
  int64_t anneal_steps = 200;
  double t_start = 0.1, t_end = 0.001;
  uint64_t seed = 1;          // the attacker's own randomness
  // EM steps of the soft start over the bigram types (0: start from the count ranks), and the
  // candidates each symbol keeps after every step
  int em_iters = 8;
  int em_keep = 20;
};
struct ManyToOneStats {
  int64_t symbols_seen = 0, sweeps = 0, moves = 0, anneal_proposals = 0, anneal_accepted = 0;
  double loglik_start = 0, loglik_end = 0;  // the objective above
  double seconds = 0;
  nlohmann::json to_json() const;
};
// traffic: symbol ids in [0, symbols). copies: c_t >= 1 per plaintext id of the prior's vocabulary.
// Returns guesses indexed by symbol (plaintext ids, best first; empty for unseen symbols).
Guesses solve_many_to_one(const std::vector<TokenSeq>& traffic, int32_t symbols, const BigramModel& prior,
                          const std::vector<int64_t>& copies, const ManyToOneOptions& opt = {},
                          ManyToOneStats* stats = nullptr);

// The objective at an assignment f (symbol -> plaintext id; every symbol of the traffic assigned),
// e.g. at the key's copy map: scoring only, it tells a search failure from a model failure.
double many_to_one_objective(const std::vector<TokenSeq>& traffic, int32_t symbols, const BigramModel& prior,
                             const std::vector<int64_t>& copies, const std::vector<int32_t>& f, double count_weight = 1.0);

}  // namespace aloepri::audit
