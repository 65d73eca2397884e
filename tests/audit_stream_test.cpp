// Token-stream attacks (TFMA, SDA), their scoring, traffic files and the PII rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <set>

#include "aloepri/audit/pii.h"
#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/error.h"
#include "aloepri/client/tokenizer.h"
#include "support/paths.h"

using namespace aloepri;
using namespace aloepri::audit;

namespace {

std::vector<int32_t> random_perm(int32_t n, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

std::vector<TokenSeq> encrypt(const std::vector<TokenSeq>& docs, const std::vector<int32_t>& tau) {
  auto out = docs;
  for (auto& d : out)
    for (auto& t : d) t = tau[size_t(t)];
  return out;
}

// A Markov chain over `n` tokens shaped like text: 70% of the time the next token is one of three
// preferred successors of the current one (.4/.2/.1), otherwise it is drawn from a Zipf law. The
// unigram frequencies are Zipf-like with near-ties (frequency ranks are unreliable) while the
// bigrams are sharp, which is what substitution deciphering exploits.
std::vector<TokenSeq> markov_text(int32_t n, int docs, int len, uint64_t chain_seed, uint64_t sample_seed) {
  std::mt19937_64 crng(chain_seed);
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<std::array<int32_t, 3>> succ(static_cast<size_t>(n));
  for (auto& s : succ)
    for (auto& x : s) {
      double u = U(crng);
      x = int32_t(std::min<double>(n - 1, std::floor(std::pow(double(n), u)) - 1 + double(crng() % 2)));
    }
  std::vector<double> zipf(static_cast<size_t>(n));
  double z = 0;
  for (int32_t i = 0; i < n; ++i) zipf[size_t(i)] = (z += 1.0 / (i + 1));
  std::mt19937_64 rng(sample_seed);
  std::vector<TokenSeq> out;
  for (int d = 0; d < docs; ++d) {
    TokenSeq s;
    int32_t x = 0;
    for (int i = 0; i < len; ++i) {
      s.push_back(x);
      double u = U(rng);
      if (u < 0.7)
        x = succ[size_t(x)][u < 0.4 ? 0 : (u < 0.6 ? 1 : 2)];
      else
        x = int32_t(std::upper_bound(zipf.begin(), zipf.end(), U(rng) * z) - zipf.begin());
    }
    out.push_back(std::move(s));
  }
  return out;
}

double top1(const Guesses& g, const std::vector<TokenSeq>& traffic, const std::vector<TokenSeq>& truth) {
  int64_t n = 0, ok = 0;
  for (size_t s = 0; s < traffic.size(); ++s)
    for (size_t i = 0; i < traffic[s].size(); ++i) {
      ++n;
      const auto& c = g[size_t(traffic[s][i])];
      ok += !c.empty() && c[0] == truth[s][i];
    }
  return double(ok) / double(n);
}

}  // namespace

TEST(BigramModel, ConditionalsSumToOneAndRankByFrequency) {
  std::vector<TokenSeq> docs = {{1, 2, 3, 2, 3, 2}, {3, 2, 2, 4}};
  auto m = BigramModel::build(docs, 6);
  EXPECT_EQ(m.tokens(), 10);
  for (int32_t x = 0; x < 6; ++x) {
    double s = 0;
    for (int32_t y = 0; y < 6; ++y) s += std::exp(m.logp(x, y));
    EXPECT_NEAR(s, 1.0, 1e-9) << "context " << x;
  }
  // 2 follows 3 three times out of three: far likelier than 4 after 3
  EXPECT_GT(m.logp(3, 2), m.logp(3, 4) + 1.0);
  ASSERT_GE(m.ranked().size(), 3u);
  EXPECT_EQ(m.ranked()[0], 2);  // 5 times
  EXPECT_EQ(m.ranked()[1], 3);  // 3 times
  // weights: the second document counted twice
  auto w = BigramModel::build_weighted(docs, {1.0, 2.0}, 6);
  EXPECT_EQ(w.tokens(), 14);
  EXPECT_EQ(w.unigram_count(4), 2);
}

TEST(Tfma, RecoversEveryTokenWithAUniqueCountWhenThePriorIsTheTrafficDistribution) {
  // Zipf-like text: token t appears floor(2000 / (t+1)) times, shuffled into documents.
  const int32_t V = 300;
  TokenSeq all;
  for (int32_t t = 0; t < V; ++t)
    for (int c = 0; c < 2000 / (t + 1); ++c) all.push_back(t);
  std::mt19937_64 rng(5);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<TokenSeq> plain;
  for (size_t i = 0; i < all.size(); i += 100) plain.emplace_back(all.begin() + long(i), all.begin() + long(std::min(all.size(), i + 100)));
  auto tau = random_perm(V, 77);
  auto traffic = encrypt(plain, tau);
  auto prior = BigramModel::build(plain, V);
  auto g = tfma(traffic, prior, V, 10);
  std::vector<int> cnt(size_t(V), 0);
  for (int32_t t : all) ++cnt[size_t(t)];
  int unique = 0;
  for (int32_t t = 0; t < V; ++t) {
    if (cnt[size_t(t)] == 0) continue;
    bool uniq = std::count(cnt.begin(), cnt.end(), cnt[size_t(t)]) == 1;
    const auto& c = g[size_t(tau[size_t(t)])];
    ASSERT_FALSE(c.empty());
    EXPECT_EQ(c.size(), 10u);
    if (uniq) {
      ++unique;
      EXPECT_EQ(c[0], t) << "token " << t << " count " << cnt[size_t(t)];
    }
  }
  EXPECT_GT(unique, 40);  // the common tokens all have distinct counts
  // ids that never occur in the traffic get no guess
  std::set<int32_t> seen;
  for (auto& d : traffic) seen.insert(d.begin(), d.end());
  for (int32_t o = 0; o < V; ++o) {
    if (!seen.count(o)) {
      EXPECT_TRUE(g[size_t(o)].empty());
    }
  }
}

TEST(Sda, BigramDecipheringBeatsFrequencyMatchingOnAMarkovSource) {
  const int32_t V = 100;
  auto prior_text = markov_text(V, 50, 1000, 11, 1);
  auto victim = markov_text(V, 20, 1000, 11, 2);  // same chain, another sample
  auto tau = random_perm(V, 99);
  auto traffic = encrypt(victim, tau);
  auto prior = BigramModel::build(prior_text, V);
  auto gt = tfma(traffic, prior, V, 5);
  SdaOptions o;
  o.seconds = 60;          // not the limit here: max_iters is (deterministic)
  o.max_iters = 100000;
  o.k = 5;
  SdaStats st;
  auto gs = sda(traffic, prior, V, o, &st);
  double a_tfma = top1(gt, traffic, victim), a_sda = top1(gs, traffic, victim);
  EXPECT_GT(st.loglik_end, st.loglik_start);
  EXPECT_GE(st.loglik_end, st.loglik_sweeps - 1e-6 * std::fabs(st.loglik_sweeps));
  EXPECT_GE(st.sweeps, 1);
  EXPECT_LT(a_tfma, 0.8);
  EXPECT_GT(a_sda, 0.95) << "TFMA " << a_tfma;
  EXPECT_GT(a_sda, a_tfma + 0.15);
  EXPECT_GT(st.sweep_moves, 0);
  for (int32_t o2 = 0; o2 < V; ++o2) {
    if (!gs[size_t(o2)].empty()) {
      EXPECT_LE(gs[size_t(o2)].size(), 5u);
    }
  }
}

TEST(StreamAttacks, RunScoresEveryPriorAndCountsPiiTokens) {
  const int32_t V = 100;
  auto victim = markov_text(V, 10, 1000, 11, 3);
  auto tau = random_perm(V, 4);
  StreamAttackInputs in;
  in.vocab_size = V;
  in.traffic = encrypt(victim, tau);
  in.truth = victim;
  in.victim_name = "markov";
  in.priors.push_back({"same distribution", BigramModel::build(markov_text(V, 20, 1000, 11, 1), V)});
  in.priors.push_back({"unrelated", BigramModel::build(markov_text(V, 20, 1000, 12, 1), V)});
  for (const auto& d : victim) {
    std::vector<uint8_t> m(d.size(), 0);
    std::vector<int32_t> item(d.size(), 0);
    for (size_t i = 0; i < d.size(); i += 7) {
      m[i] = 1;
      item[i] = int32_t(i / 7 + 1);  // every marked token its own item
    }
    in.pii_mask.push_back(m);
    in.pii_item.push_back(item);
  }
  in.unscored_plain_ids = {0};
  in.sda.max_iters = 50000;
  in.sda.seconds = 60;
  auto res = run_stream_attacks(in);
  ASSERT_EQ(res.size(), 4u);
  EXPECT_EQ(res[0].attack, "TFMA");
  EXPECT_EQ(res[1].attack, "SDA");
  EXPECT_EQ(res[2].setting, "prior: unrelated");
  int64_t zeros = 0;
  for (auto& d : victim) zeros += std::count(d.begin(), d.end(), 0);
  for (const auto& r : res) {
    EXPECT_EQ(r.victim_tokens, 10000 - zeros) << "token 0 is unscored";
    EXPECT_GE(r.ttrsr, 0.0);
    EXPECT_LE(r.ttrsr, 1.0);
    ASSERT_EQ(r.topk.size(), 3u);
    EXPECT_LE(r.topk[0].second, r.topk[1].second);
    EXPECT_LE(r.topk[1].second, r.topk[2].second);
    EXPECT_NEAR(r.topk[0].second, r.ttrsr, 1e-12);
    EXPECT_GE(r.pii_recovery, 0.0);
    EXPECT_GT(r.details.at("pii_tokens").get<int64_t>(), 600);
    EXPECT_EQ(r.details.at("pii_items").get<int64_t>(), r.details.at("pii_tokens").get<int64_t>());
    EXPECT_NEAR(r.details.at("pii_items_recovered").get<double>(), r.pii_recovery, 1e-12);
    // mask value 1 = PiiKind::Email + 1: every PII token is counted as an e-mail token
    EXPECT_EQ(r.details.at("pii_by_kind").at("email").at("tokens"), r.details.at("pii_tokens"));
    EXPECT_GE(r.bleu4, 0.0);
    EXPECT_LE(r.bleu4, 1.0);
    EXPECT_TRUE(r.details.contains("top100_vocab"));
  }
  // with the right chain as prior SDA recovers most tokens, BLEU follows; a prior from another
  // chain recovers next to nothing
  EXPECT_GT(res[1].ttrsr, 0.9) << "TFMA " << res[0].ttrsr;
  EXPECT_GT(res[1].ttrsr, res[0].ttrsr);
  EXPECT_GT(res[1].bleu4, 0.8);
  EXPECT_LT(res[3].ttrsr, 0.5);
}

TEST(Homophones, CopiesFollowSqrtFrequencyAndEncodeToOwnCopies) {
  // Frequencies 400, 100, 25, 0: sqrt shares 20 : 10 : 5 : 0 of 7 extra ids -> 4, 2, 1, 0.
  const Homophones h = make_homophones({400, 100, 25, 0}, 7);
  EXPECT_EQ(h.symbols(), 4 + 7);
  EXPECT_EQ(h.copies(0), 5);
  EXPECT_EQ(h.copies(1), 3);
  EXPECT_EQ(h.copies(2), 2);
  EXPECT_EQ(h.copies(3), 1);
  for (int32_t s = 0; s < h.symbols(); ++s) {
    EXPECT_GE(s, h.first[size_t(h.base[size_t(s)])]);
    EXPECT_LT(s, h.first[size_t(h.base[size_t(s)]) + 1]);
  }
  const std::vector<TokenSeq> docs = {TokenSeq(2000, 0), {1, 2, 3, 3}};
  const auto enc = homophonic_encode(docs, h, 3);
  std::set<int32_t> used;
  for (int32_t s : enc[0]) {
    EXPECT_EQ(h.base[size_t(s)], 0);
    used.insert(s);
  }
  EXPECT_EQ(used.size(), 5u);  // every copy drawn in 2000 draws
  for (size_t i = 0; i < docs[1].size(); ++i) EXPECT_EQ(h.base[size_t(enc[1][i])], docs[1][i]);
  EXPECT_THROW(make_homophones({1, 2}, -1), Error);
}

TEST(Homophones, SplittingFrequentTokensDefeatsFrequencyMatching) {
  // The TFMA setting where it recovers every token (prior = traffic distribution): with copies
  // drawn at random the ranks of the copies no longer line up with the prior's, even for an
  // attacker who simulates the scheme on its prior; candidates are scored as plaintext ids.
  const int32_t V = 300;
  TokenSeq all;
  for (int32_t t = 0; t < V; ++t)
    for (int c = 0; c < 2000 / (t + 1); ++c) all.push_back(t);
  std::mt19937_64 rng(5);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<TokenSeq> plain;
  for (size_t i = 0; i < all.size(); i += 100)
    plain.emplace_back(all.begin() + long(i), all.begin() + long(std::min(all.size(), i + 100)));
  StreamAttackInputs in;
  in.vocab_size = V;
  in.traffic = encrypt(plain, random_perm(V, 77));
  in.truth = plain;
  in.priors = {{"same", BigramModel::build(plain, V)}};
  in.run_sda = false;
  const double mono = run_stream_attacks(in)[0].ttrsr;
  std::vector<double> freq(size_t(V), 0);
  for (int32_t t : all) freq[size_t(t)] += 1;
  const Homophones h = make_homophones(freq, 600);
  in.vocab_size = h.symbols();
  in.traffic = encrypt(homophonic_encode(plain, h, 1), random_perm(h.symbols(), 78));
  in.priors = {{"same", BigramModel::build(homophonic_encode(plain, h, 2), h.symbols())}};
  in.symbol_to_plain = h.base;
  const auto r = run_stream_attacks(in);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_GT(mono, 0.7);
  EXPECT_LT(r[0].ttrsr, mono - 0.3);
}

TEST(StreamAttacks, TrafficFileRoundTripAndErrors) {
  auto dir = aloepri::testing::scratch_dir("audit_stream_traffic");
  std::vector<TokenSeq> seqs = {{1, 2, 3}, {}, {31999, 0}};
  write_traffic(dir + "/t.jsonl", seqs);
  EXPECT_THROW(write_traffic(dir + "/t.jsonl", seqs), Error);  // refuses to overwrite
  auto back = read_traffic(dir + "/t.jsonl", 32000);
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[0], seqs[0]);
  EXPECT_TRUE(back[1].empty());
  EXPECT_EQ(back[2], seqs[2]);
  EXPECT_THROW(read_traffic(dir + "/t.jsonl", 100), Error);  // id outside the vocabulary
  std::ofstream(dir + "/bad.jsonl") << "[1,2]\n{\"ids\":[3]}\n";
  try {
    read_traffic(dir + "/bad.jsonl");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  auto cut = take_tokens({{1, 2, 3}, {4, 5, 6}}, 4);
  ASSERT_EQ(cut.size(), 2u);
  EXPECT_EQ(cut[1], (TokenSeq{4}));
}

TEST(Pii, RulesFindNamesEmailsPhonesAndAddresses) {
  PiiRules rules({"Germain", "Abigail", "May"});
  std::string text =
      "From: \"Kiall Mac Innes\" <kiall@redpie.com>\n"
      "To: ilug@linux.ie\n"
      "Date: Thu, 22 Aug 2002 12:36:16 +0100\n\n"
      "May I ask Abigail Douglas about it? Call +353 1 234 5678 or 201-555-0123.\n"
      "-- \nGermain Tara\n298 Tara Place, Boise, ID 59600\nPhone: (937) 555-5572\ngermain.tara@example.net\n"
      "Version 1.2.3 shipped in 2002 with 1024 files.\n";
  auto spans = rules.find(text);
  std::vector<std::pair<std::string, std::string>> got;
  for (const auto& s : spans) got.push_back({pii_kind_name(s.kind), text.substr(s.begin, s.end - s.begin)});
  std::vector<std::pair<std::string, std::string>> want = {
      {"name", "Kiall Mac Innes"},        {"email", "kiall@redpie.com"},
      {"email", "ilug@linux.ie"},         {"name", "Abigail Douglas"},
      {"phone", "+353 1 234 5678"},       {"phone", "201-555-0123"},
      {"name", "Germain Tara"},           {"address", "298 Tara Place, Boise, ID 59600"},
      {"phone", "(937) 555-5572"},        {"email", "germain.tara@example.net"}};
  EXPECT_EQ(got, want);
}

TEST(Pii, TokensOfPiiItemsAreMarkedOnTheRealTokenizer) {
  auto tok = Tokenizer::load(aloepri::testing::vocab_dir("llama2"));
  PiiRules rules({"Germain"});
  auto ids = tok.encode("Please write to Germain Tara at germain.tara@example.net today, or call (937) 555-5572.", true);
  auto pt = mark_pii_tokens(tok, ids, rules);
  ASSERT_EQ(pt.mask.size(), ids.size());
  ASSERT_EQ(pt.spans.size(), 3u);
  std::string marked, unmarked;
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string piece = tok.decode(std::span<const int32_t>(&ids[i], 1), {.skip_special = true, .cleanup = false});
    (pt.mask[i] ? marked : unmarked) += piece + "|";
  }
  for (const char* w : {"Germ", "ara", "example", "9", "5"}) EXPECT_NE(marked.find(w), std::string::npos) << marked;
  for (const char* w : {"Please", "write", "today", "call"}) {
    EXPECT_EQ(marked.find(w), std::string::npos) << marked;
    EXPECT_NE(unmarked.find(w), std::string::npos) << unmarked;
  }
  EXPECT_EQ(pt.mask[0], 0);  // BOS
  std::set<int32_t> items(pt.item.begin(), pt.item.end());
  EXPECT_EQ(items, (std::set<int32_t>{0, 1, 2, 3}));
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(pt.item[i] > 0, pt.mask[i] == 1);
  int64_t n = std::count(pt.mask.begin(), pt.mask.end(), 1);
  EXPECT_GT(n, 12);
}
