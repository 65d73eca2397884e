// The oracle attack (audit/oracle.h): the branch forward it relies on equals ordinary decoding,
// it recovers the whole vocabulary from an exact (permutation-only) obfuscation and from the
// plaintext model itself, and heavy noise costs it ground.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <numeric>

#include "aloepri/audit/oracle.h"
#include "aloepri/audit/weights.h"
#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/core/homophones.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "support/paths.h"

using namespace aloepri;
using namespace aloepri::audit;
namespace at = aloepri::testing;

namespace {

constexpr int64_t kVocab = 512;

ModelConfig small_config(const std::string& type = "llama") {
  nlohmann::json j = {{"model_type", type}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                      {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 16},
                      {"intermediate_size", 160}, {"vocab_size", kVocab}, {"rms_norm_eps", 1e-5},
                      {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  if (type == "mistral") j["sliding_window"] = 2;
  return ModelConfig::from_json(j);
}

Seed test_seed(uint8_t v) {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(v * 17 + i * 5 + 3);
  return s;
}

const std::string& plain_dir() {
  static const std::string dir = [] {
    std::string d = at::scratch_dir("audit_oracle_plain") + "/model";
    write_synthetic_model(d, small_config(), 11, DType::F32);
    return d;
  }();
  return dir;
}

struct Obf {
  std::string dir;
  std::vector<int64_t> tau;
};

Obf obfuscated(const std::string& name, const ObfuscationParams& p) {
  const std::string out = at::scratch_dir("audit_oracle_" + name) + "/obf";
  ObfuscateOptions opt;
  opt.params = p;
  opt.dtype = DType::F32;
  const Seed s = test_seed(uint8_t(name.size()));
  obfuscate_model(plain_dir(), s, out, opt);
  return {out, derive_tau(s, kVocab)};
}

std::vector<int32_t> all_ids() {
  std::vector<int32_t> v(kVocab);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

AttackResult run(const std::string& obf_dir, const std::vector<int64_t>& tau, OracleOptions opt = {}) {
  ReferenceModel plain = ReferenceModel::load(plain_dir());
  ReferenceModel obf = ReferenceModel::load(obf_dir);
  const auto& oc = obf.config();
  const VocabAttack a = oracle_attack(plain, obf, 1, oc.bos_token_id.value_or(-1), 2, oc.eos_token_id.value_or(-1),
                                      make_query(tau, all_ids(), {}), opt);
  return score_vocab_attack(a, "test", tau, all_ids(), all_ids());
}

}  // namespace

// branch_hidden(x) after a prefix is what step(x) computes: the same logits, for full attention
// and for a sliding window that hides part of the prefix; the cache is left as it was.
TEST(BranchForward, EqualsStepAfterPrefix) {
  for (const std::string type : {"llama", "mistral"}) {
    const std::string d = at::scratch_dir("oracle_branch_" + type) + "/model";
    write_synthetic_model(d, small_config(type), 3, DType::F32);
    ReferenceModel m = ReferenceModel::load(d);
    const std::vector<int64_t> prefix = {1, 17, 33}, alts = {5, 9, 400, 17};
    m.reset();
    m.prefill(prefix);
    const std::vector<double> h = m.branch_hidden(alts);
    EXPECT_EQ(m.position(), 3) << "branch must not move the cache";
    const int64_t dm = m.config().hidden_size, n = m.vocab_size();
    const auto& head = m.weights().head;  // [n, d]
    for (size_t b = 0; b < alts.size(); ++b) {
      std::vector<int64_t> seq = prefix;
      seq.push_back(alts[b]);
      m.reset();
      const std::vector<double> want = m.prefill(seq);
      double err = 0, ref = 0;
      for (int64_t y = 0; y < n; ++y) {
        double got = 0;
        for (int64_t i = 0; i < dm; ++i) got += h[b * dm + i] * head.data[size_t(y * dm + i)];
        err = std::max(err, std::abs(got - want[size_t(y)]));
        ref = std::max(ref, std::abs(want[size_t(y)]));
      }
      EXPECT_LT(err, 1e-5 * ref) << type << " alternative " << alts[b];
    }
  }
}

TEST(OracleAttack, RecoversExactObfuscation) {
  const Obf o = obfuscated("exact", ObfuscationParams::profile("exact"));
  const AttackResult r = run(o.dir, o.tau);
  EXPECT_GT(r.ttrsr, 0.98);
  EXPECT_GT(r.vocab_recovery, 0.98);
}

TEST(OracleAttack, RecoversPlaintextAgainstItself) {
  std::vector<int64_t> identity(kVocab);
  std::iota(identity.begin(), identity.end(), 0);
  const AttackResult r = run(plain_dir(), identity);
  EXPECT_GT(r.ttrsr, 0.98);
}

TEST(OracleAttack, SignaturesAloneAreWeakerThanGraphMatching) {
  const Obf o = obfuscated("exact2", ObfuscationParams::profile("exact"));
  OracleOptions sig_only;
  sig_only.rounds = 0;
  const AttackResult sig = run(o.dir, o.tau, sig_only);
  const AttackResult full = run(o.dir, o.tau);
  EXPECT_GE(full.ttrsr, sig.ttrsr);
  EXPECT_GT(full.ttrsr, 0.98);
}

// Noise is the one thing that is not a symmetry: a light draw leaves most of the graph, a heavy
// one destroys it (on this random model, whose rows all have the same scale).
TEST(OracleAttack, HeavyNoiseCostsRecovery) {
  ObfuscationParams p = ObfuscationParams::profile("noise");
  p.alpha_e = 0.1;
  p.alpha_h = 0.05;
  const Obf light = obfuscated("light", p);
  p.alpha_e = 6.0;
  p.alpha_h = 6.0;
  const Obf heavy = obfuscated("heavy", p);
  const AttackResult rl = run(light.dir, light.tau), rh = run(heavy.dir, heavy.tau);
  std::cout << "oracle TTRSR: alpha_e .1 " << rl.ttrsr << ", alpha 6: " << rh.ttrsr << "\n";
  EXPECT_LT(rh.ttrsr, 0.5);
  EXPECT_GT(rl.ttrsr, rh.ttrsr + 0.2);
}

TEST(OracleAttack, RowBudgetKeepsQueriedIds) {
  const Obf o = obfuscated("budget", ObfuscationParams::profile("exact"));
  OracleOptions opt;
  opt.rows = 128;
  ReferenceModel plain = ReferenceModel::load(plain_dir());
  ReferenceModel obf = ReferenceModel::load(o.dir);
  Query q;
  q.obf_ids = {int32_t(o.tau[40]), int32_t(o.tau[41])};
  const VocabAttack a = oracle_attack(plain, obf, 1, obf.config().bos_token_id.value_or(-1), 2,
                                      obf.config().eos_token_id.value_or(-1), q, opt);
  // the 128 most likely, plus the queried ids and the seeds that were not among them
  EXPECT_GE(a.details["rows_obf"].get<int64_t>(), 128);
  EXPECT_LE(a.details["rows_obf"].get<int64_t>(), 128 + 4);
  EXPECT_GE(a.details["rows_plain"].get<int64_t>(), 128);
  EXPECT_LE(a.details["rows_plain"].get<int64_t>(), 128 + 2);
  EXPECT_FALSE(a.guesses[size_t(o.tau[40])].empty());
  EXPECT_FALSE(a.guesses[size_t(o.tau[41])].empty());
}

// Matching only the observed ids plus a few likely rows (the default on big vocabularies) must
// recover as much as matching every row: features are standardized over the whole side first.
TEST(OracleAttack, SubsetMatchingRecoversExactObfuscation) {
  const Obf o = obfuscated("subset", ObfuscationParams::profile("exact"));
  std::vector<int32_t> victim;
  for (int32_t t = 3; t < kVocab; t += 5) victim.push_back(t);
  OracleOptions opt;
  opt.match_rows = 32;
  ReferenceModel plain = ReferenceModel::load(plain_dir());
  ReferenceModel obf = ReferenceModel::load(o.dir);
  const VocabAttack a = oracle_attack(plain, obf, 1, obf.config().bos_token_id.value_or(-1), 2,
                                      obf.config().eos_token_id.value_or(-1), make_query(o.tau, victim, {}), opt);
  EXPECT_LT(a.details["rows_matched"].get<int64_t>(), kVocab / 2);
  const AttackResult r = score_vocab_attack(a, "test", o.tau, victim, victim);
  EXPECT_GT(r.ttrsr, 0.98);
}

// A homophonic exact obfuscation (n' = n + 128 ids, frequent tokens copied): the oracle groups the
// copies (identical embedding rows and head columns) and matches many-to-one; every copy of every
// token is recovered, as for the plain permutation.
TEST(OracleAttack, RecoversEveryCopyOfAHomophonicExactObfuscation) {
  std::vector<double> freq(kVocab);
  for (int64_t t = 0; t < kVocab; ++t) freq[size_t(t)] = 1000.0 / double(1 + (t * 37) % kVocab);
  const auto copies = allocate_copies(freq, 128, CopyRule::Flat, {1, 2});
  const std::string out = at::scratch_dir("audit_oracle_homophones") + "/obf";
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::exact();
  opt.dtype = DType::F32;
  opt.copies = copies;
  const Seed s = test_seed(9);
  obfuscate_model(plain_dir(), s, out, opt);
  const VocabMap map(s, kVocab, copies);
  ReferenceModel plain = ReferenceModel::load(plain_dir());
  ReferenceModel obf = ReferenceModel::load(out);
  ASSERT_EQ(obf.vocab_size(), kVocab + 128);
  const auto& oc = obf.config();
  Query q;
  std::vector<int32_t> victim, sent;
  for (int64_t t = 0; t < kVocab; ++t)
    for (int64_t c = 0; c < map.copies(t); ++c) {
      victim.push_back(int32_t(t));
      sent.push_back(int32_t(map.id(t, c)));
      q.obf_ids.push_back(int32_t(map.id(t, c)));
    }
  std::sort(q.obf_ids.begin(), q.obf_ids.end());
  const VocabAttack a = oracle_attack(plain, obf, 1, oc.bos_token_id.value_or(-1), 2, oc.eos_token_id.value_or(-1), q, {});
  ASSERT_TRUE(a.details.contains("homophones")) << a.details.dump();
  EXPECT_EQ(a.details["homophones"]["groups"].get<int64_t>(), kVocab);
  const AttackResult r = score_vocab_attack(a, "test", map.first_copies(), victim, all_ids(), {1, 5, 10}, &sent);
  std::cout << "oracle on homophonic exact: every copy " << r.ttrsr << ", vocabulary " << r.vocab_recovery << "\n";
  // As on the permutation-only obfuscation (>= 98% of the vocabulary), and every copy of a token
  // answers alike (the copies were grouped, not matched one by one).
  EXPECT_GE(r.vocab_recovery, 0.98);
  EXPECT_GE(r.ttrsr, 0.98);  // every copy, as sent
  for (int64_t t = 0; t < kVocab; ++t) {
    const auto& g0 = a.guesses[size_t(map.id(t, 0))];
    ASSERT_FALSE(g0.empty()) << t;
    for (int64_t c = 1; c < map.copies(t); ++c) EXPECT_EQ(a.guesses[size_t(map.id(t, c))], g0) << "copy " << c << " of " << t;
    if (g0[0] != t) std::cout << "  missed id " << t << " (" << map.copies(t) << " copies), guessed " << g0[0] << "\n";
  }
}

// Seeds from another attack (the "oracle-nn" entry): only unambiguous top-1 guesses, the most
// frequent observed ids first, at most the cap.
TEST(OracleAttack, SeedsFromGuessesAreUnambiguousAndFrequentFirst) {
  Guesses g(8);
  g[1] = {10, 11};
  g[2] = {20};
  g[3] = {10};  // claims 10 as well: ambiguous, with id 1
  g[5] = {50};
  g[6] = {};
  const std::vector<int32_t> traffic = {5, 5, 5, 2, 2, 1, 3, 3, 3, 3};
  const auto s = seeds_from_guesses(g, traffic, 8);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0], std::make_pair(int32_t(5), int32_t(50)));
  EXPECT_EQ(s[1], std::make_pair(int32_t(2), int32_t(20)));
  EXPECT_EQ(seeds_from_guesses(g, traffic, 1).size(), 1u);
}

// Where the noise blurs the signatures, correct seeds from elsewhere start the growth: the
// seeded oracle recovers at least what the unseeded one does and uses every seed it is given.
TEST(OracleAttack, ExternalSeedsStartTheGrowth) {
  ObfuscationParams p = ObfuscationParams::profile("noise");
  p.alpha_e = 1.0;
  p.alpha_h = 1.0;
  const Obf o = obfuscated("seeded", p);
  OracleOptions seeded;
  for (int32_t t = 3; t < kVocab; t += 4) seeded.seeds.emplace_back(int32_t(o.tau[size_t(t)]), t);
  const AttackResult r0 = run(o.dir, o.tau), r1 = run(o.dir, o.tau, seeded);
  std::cout << "oracle TTRSR at alpha 1: unseeded " << r0.ttrsr << ", " << seeded.seeds.size()
            << " true seeds " << r1.ttrsr << "\n";
  EXPECT_EQ(r1.details["external_seeds"].get<int64_t>(), int64_t(seeded.seeds.size()));
  EXPECT_EQ(r0.details["external_seeds"].get<int64_t>(), 0);
  // Seeded with a quarter of the vocabulary, the growth recovers well beyond the seeds (measured
  // 0.85 against 0.01 unseeded on this model), i.e. the seeds start it rather than being copied.
  EXPECT_GT(r1.ttrsr, 0.5);
  EXPECT_GT(r1.ttrsr, r0.ttrsr + 0.3);
  OracleOptions bad;
  bad.seeds = {{int32_t(kVocab), 0}};
  EXPECT_THROW(run(o.dir, o.tau, bad), Error);
}
