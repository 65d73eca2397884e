// Copy grouping of a homophonic vocabulary (audit/copy_groups.h): the attacker who groups the copies
// from the served weights, or from the traffic, and attacks the merged stream (issue 14).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "aloepri/audit/copy_groups.h"
#include "aloepri/audit/homophone_solver.h"
#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/error.h"
#include "aloepri/core/homophones.h"

using namespace aloepri;
using namespace aloepri::audit;

namespace {

// A copy map: `copies` per plaintext id, slots placed by a random permutation of [0, n').
std::vector<int32_t> random_copy_map(const std::vector<int64_t>& copies, uint64_t seed) {
  std::vector<int32_t> slot_plain;
  for (size_t t = 0; t < copies.size(); ++t)
    for (int64_t c = 0; c < copies[t]; ++c) slot_plain.push_back(int32_t(t));
  std::vector<int32_t> perm(slot_plain.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> to_plain(slot_plain.size());
  for (size_t s = 0; s < slot_plain.size(); ++s) to_plain[size_t(perm[s])] = slot_plain[s];
  return to_plain;
}

std::vector<int64_t> some_copies(int32_t n) {
  std::vector<int64_t> c(static_cast<size_t>(n), 1);
  for (int32_t t = 0; t < 40; ++t) c[size_t(t)] = 1 + (t < 5 ? 20 : (t % 4));  // 5 tokens x 21, 35 x 1-4
  return c;
}

// Served [n', d] embedding and head: every id gets its token's row plus noise of std `noise`
// (per coordinate, rows ~ N(0, 1)); `independent` draws every id's own row instead (no copies).
std::pair<Tensor, Tensor> served_rows(const std::vector<int32_t>& to_plain, int32_t n, int64_t d, double noise,
                                      bool independent, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> N(0, 1);
  const int64_t np = int64_t(to_plain.size());
  Tensor be({n, d}), bh({n, d}), e({np, d}), h({np, d});
  for (auto* m : {&be, &bh})
    for (int64_t i = 0; i < m->numel(); ++i) m->ptr()[i] = N(rng);
  for (int64_t id = 0; id < np; ++id)
    for (int64_t k = 0; k < d; ++k) {
      const int64_t t = to_plain[size_t(id)];
      e.ptr()[id * d + k] = independent ? N(rng) : be.ptr()[t * d + k] + float(noise) * N(rng);
      h.ptr()[id * d + k] = independent ? N(rng) : bh.ptr()[t * d + k] + float(noise) * N(rng);
    }
  return {std::move(e), std::move(h)};
}

// Text-like Markov chain over n tokens: each token has four preferred successors (together .8),
// otherwise a Zipf draw; `iid` draws every token from the Zipf law alone (no context structure).
std::vector<TokenSeq> chain_text(int32_t n, int docs, int len, bool iid, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<double> cum(static_cast<size_t>(n));
  double z = 0;
  for (int32_t i = 0; i < n; ++i) cum[size_t(i)] = (z += 1.0 / (i + 1));
  auto zipf = [&] { return int32_t(std::upper_bound(cum.begin(), cum.end(), U(rng) * z) - cum.begin()); };
  std::vector<std::array<int32_t, 4>> succ(static_cast<size_t>(n));
  for (auto& s : succ)
    for (auto& x : s) x = zipf();
  std::vector<TokenSeq> out;
  for (int d = 0; d < docs; ++d) {
    TokenSeq s;
    int32_t x = zipf();
    for (int i = 0; i < len; ++i) {
      s.push_back(x);
      const double u = U(rng);
      x = !iid && u < 0.8 ? succ[size_t(x)][size_t(u / 0.2)] : zipf();
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Each token replaced by a uniformly drawn copy of it (to_plain inverted).
std::vector<TokenSeq> encode(const std::vector<TokenSeq>& plain, const std::vector<int32_t>& to_plain, uint64_t seed) {
  std::vector<std::vector<int32_t>> ids;
  for (size_t s = 0; s < to_plain.size(); ++s) {
    if (ids.size() <= size_t(to_plain[s])) ids.resize(size_t(to_plain[s]) + 1);
    ids[size_t(to_plain[s])].push_back(int32_t(s));
  }
  std::mt19937_64 rng(seed);
  auto out = plain;
  for (auto& d : out)
    for (auto& t : d) t = ids[size_t(t)][rng() % ids[size_t(t)].size()];
  return out;
}

// Occurrences of each of the n ids in docs (the public frequency table the copies come from).
std::vector<double> token_counts(const std::vector<TokenSeq>& docs, int32_t n) {
  std::vector<double> freq(static_cast<size_t>(n), 0);
  for (const auto& d : docs)
    for (int32_t t : d) freq[size_t(t)] += 1;
  return freq;
}

}  // namespace

TEST(CopyGrouping, IdenticalServedRowsGiveTheTrueCopyMapExactly) {
  const int32_t n = 300;
  const auto copies = some_copies(n);
  const auto to_plain = random_copy_map(copies, 3);
  const auto [e, h] = served_rows(to_plain, n, 32, 0.0, false, 4);
  const CopyGrouping g = group_copies_by_weights(e, h, n);
  EXPECT_EQ(g.groups, n);
  EXPECT_EQ(g.info["identical_groups"].get<int64_t>(), n);
  EXPECT_EQ(g.info["merged_by_distance"].get<int64_t>(), 0);
  const GroupingScore s = score_copy_grouping(g, to_plain);
  EXPECT_EQ(s.precision, 1.0);
  EXPECT_EQ(s.recall, 1.0);
  EXPECT_EQ(s.tokens_exact, 1.0);
  EXPECT_GT(s.pairs_true, 1000);
  // Every pair of ids is grouped exactly when they are copies of one token.
  for (size_t a = 0; a < to_plain.size(); a += 7)
    for (size_t b = 0; b < to_plain.size(); b += 5)
      ASSERT_EQ(g.group[a] == g.group[b], to_plain[a] == to_plain[b]) << a << " " << b;
}

TEST(CopyGrouping, NoisyCopiesAreGroupedByDistanceAndIndependentRowsAreNot) {
  const int32_t n = 300;
  const auto copies = some_copies(n);
  const auto to_plain = random_copy_map(copies, 5);
  const int64_t np = int64_t(to_plain.size());
  {  // each copy with its own noise, 0.3 of the rows' spread: grouped exactly by distance
    const auto [e, h] = served_rows(to_plain, n, 128, 0.3, false, 6);
    WeightGroupingOptions capped;
    capped.max_group = 21;
    const CopyGrouping g = group_copies_by_weights(e, h, n, capped);
    EXPECT_EQ(g.info["identical_groups"].get<int64_t>(), np);  // nothing bitwise equal
    EXPECT_EQ(g.groups, n);
    const GroupingScore s = score_copy_grouping(g, to_plain);
    EXPECT_EQ(s.precision, 1.0);
    EXPECT_EQ(s.recall, 1.0);
  }
  {  // control: every id its own independent row; the same copy map is what the attacker must find
    const auto [e, h] = served_rows(to_plain, n, 128, 0.0, true, 7);
    const CopyGrouping gated = group_copies_by_weights(e, h, n);
    EXPECT_EQ(gated.info["merged_by_distance"].get<int64_t>(), 0) << gated.info.dump();
    EXPECT_EQ(gated.groups, np);
    EXPECT_EQ(score_copy_grouping(gated, to_plain).recall, 0.0);
    // Forced down to n groups, the merges are as good as chance.
    WeightGroupingOptions forced;
    forced.gate = 0;
    const CopyGrouping g = group_copies_by_weights(e, h, n, forced);
    EXPECT_EQ(g.groups, n);
    const GroupingScore s = score_copy_grouping(g, to_plain);
    EXPECT_LT(s.precision, 0.2) << s.to_json().dump();
    EXPECT_LT(s.recall, 0.05) << s.to_json().dump();
    // The public table's largest copy count bounds every group.
    forced.max_group = 21;
    const CopyGrouping capped = group_copies_by_weights(e, h, n, forced);
    std::vector<int> members(size_t(capped.groups), 0);
    for (int32_t gr : capped.group) ++members[size_t(gr)];
    EXPECT_LE(*std::max_element(members.begin(), members.end()), 21);
    EXPECT_GT(*std::max_element(members.begin(), members.end()), 1);
  }
  EXPECT_THROW(group_copies_by_weights(Tensor({4, 3}), Tensor({4, 2}), 2), Error);
}

TEST(CopyGrouping, ContextsGroupCopiesOfStructuredTrafficNotOfIidTraffic) {
  const int32_t n = 400;
  const auto structured = chain_text(n, 200, 500, false, 8);
  const std::vector<double> freq = token_counts(structured, n);
  const auto copies = allocate_copies(freq, 400, CopyRule::Flat);
  const auto to_plain = random_copy_map(copies, 9);
  const int32_t S = int32_t(to_plain.size());
  const CopyGrouping g = group_copies_by_context(encode(structured, to_plain, 10), S, copies, freq);
  const GroupingScore s = score_copy_grouping(g, to_plain);
  EXPECT_GT(s.precision, 0.8) << s.to_json().dump() << g.info.dump();
  std::printf("structured traffic: %s\n", s.to_json().dump().c_str());
  EXPECT_GT(s.recall, 0.3) << s.to_json().dump();
  // The same copy table on traffic whose tokens are independent draws: contexts say nothing, so
  // (almost) nothing is grouped.
  const auto iid = chain_text(n, 200, 500, true, 11);
  const CopyGrouping c = group_copies_by_context(encode(iid, to_plain, 12), S, copies, freq);
  const GroupingScore cs = score_copy_grouping(c, to_plain);
  EXPECT_LT(cs.recall, 0.05) << cs.to_json().dump() << c.info.dump();
  EXPECT_LT(cs.pairs_grouped * 10, s.pairs_grouped) << cs.to_json().dump();
  // Single linkage (no centroid check) chains the iid symbols into groups as likely as chance.
  ContextGroupingOptions single;
  single.linkage_cosine = 0;
  const GroupingScore ss = score_copy_grouping(group_copies_by_context(encode(iid, to_plain, 12), S, copies, freq, single), to_plain);
  EXPECT_GT(ss.pairs_grouped, cs.pairs_grouped) << ss.to_json().dump();
  EXPECT_LT(ss.precision, s.precision - 0.4) << ss.to_json().dump();
}

TEST(CopyGrouping, MergedStreamWithTheTrueGroupsIsAttackedLikeThePlainStream) {
  const int32_t n = 400;
  const auto plain = chain_text(n, 100, 500, false, 13);
  const std::vector<double> freq = token_counts(plain, n);
  const auto copies = allocate_copies(freq, 400, CopyRule::Flat);
  const auto to_plain = random_copy_map(copies, 14);
  StreamAttackInputs in;
  in.truth = plain;
  in.priors = {{"same", BigramModel::build(plain, n)}};
  in.run_sda = false;
  // The plain stream through a permutation (one copy each).
  in.vocab_size = n;
  in.traffic = encode(plain, random_copy_map(std::vector<int64_t>(size_t(n), 1), 15), 16);
  const double mono = run_stream_attacks(in)[0].ttrsr;
  // The homophonic stream attacked over copies without grouping (the prior simulated over copies).
  const int32_t S = int32_t(to_plain.size());
  in.vocab_size = S;
  in.traffic = encode(plain, to_plain, 17);
  in.priors = {{"same", BigramModel::build(encode(plain, to_plain, 18), S)}};
  in.symbol_to_plain = to_plain;
  const double split = run_stream_attacks(in)[0].ttrsr;
  // Grouped by the true copy map: the merged stream is the plain one relabelled.
  in.priors = {{"same", BigramModel::build(plain, n)}};
  in.symbol_to_plain.clear();
  in.symbol_group = to_plain;
  const double merged = run_stream_attacks(in)[0].ttrsr;
  EXPECT_GT(mono, 0.5);
  EXPECT_LT(split, mono - 0.3);
  EXPECT_NEAR(merged, mono, 0.02);
  in.symbol_group.pop_back();
  EXPECT_THROW(run_stream_attacks(in), Error);
}

// The traffic-only attacker's many-to-one deciphering (audit/homophone_solver.h): on text-like
// traffic (400 tokens, 400 extra copies, 50k tokens of traffic) its EM start and sweeps recover
// far more than frequency matching over the copies; on i.i.d. traffic, where contexts say
// nothing, they gain nothing.
TEST(ManyToOneSolver, DeciphersStructuredTrafficNotIidTraffic) {
  const int32_t n = 400;
  struct Run {
    double start = 0, solved = 0;
    ManyToOneStats st;
    double loglik_truth = 0;
  };
  auto run = [&](bool iid) {
    const auto text = chain_text(n, 300, 500, iid, 21);
    const std::vector<TokenSeq> prior(text.begin(), text.begin() + 200), victim(text.begin() + 200, text.end());
    const std::vector<double> freq = token_counts(prior, n);
    const auto copies = allocate_copies(freq, 400, CopyRule::Flat);
    const auto to_plain = random_copy_map(copies, 22);
    const int32_t S = int32_t(to_plain.size());
    const auto traffic = encode(victim, to_plain, 23);
    const BigramModel lm = BigramModel::build(prior, n);
    auto accuracy = [&](const Guesses& g) {
      int64_t right = 0, all = 0;
      for (const auto& q : traffic)
        for (int32_t s : q) ++all, right += !g[size_t(s)].empty() && g[size_t(s)][0] == to_plain[size_t(s)];
      return double(right) / double(all);
    };
    Run r;
    ManyToOneOptions o;
    o.max_sweeps = 0;
    o.em_iters = 0;
    r.start = accuracy(solve_many_to_one(traffic, S, lm, copies, o));
    ManyToOneOptions quick;  // a test-sized search
    quick.max_sweeps = 8;
    quick.anneal_steps = 50;
    quick.window = 50;
    r.solved = accuracy(solve_many_to_one(traffic, S, lm, copies, quick, &r.st));
    r.loglik_truth = many_to_one_objective(traffic, S, lm, copies, to_plain);
    std::printf("many-to-one, %s traffic: start %.3f, solved %.3f, %s, objective at the truth %.1f\n",
                iid ? "i.i.d." : "structured", r.start, r.solved, r.st.to_json().dump().c_str(), r.loglik_truth);
    return r;
  };
  const Run s = run(false), c = run(true);
  EXPECT_GE(s.st.loglik_end, s.st.loglik_start);  // greedy moves never lower the objective
  EXPECT_GT(s.st.moves, 0);
  EXPECT_GT(s.solved, 0.6);
  EXPECT_GT(s.solved, s.start + 0.4);
  EXPECT_LT(c.solved, c.start + 0.03);
}
