// NN against served weights that drifted from the public ones (issue 13): the drifted-model
// writer, the drift-robust alignment against the classic one, and the per-tensor drift report.
// Small random checkpoints obfuscated by the real executor; the attack always gets the
// UNdrifted public model.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "aloepri/audit/metrics.h"
#include "aloepri/audit/drift.h"
#include "aloepri/audit/weights.h"
#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "support/paths.h"

using namespace aloepri;
using namespace aloepri::audit;
namespace at = aloepri::testing;

namespace {

constexpr int64_t kVocab = 1024;

ModelConfig small_config() {
  return ModelConfig::from_json({{"model_type", "llama"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 16},
                                 {"intermediate_size", 160}, {"vocab_size", kVocab}, {"rms_norm_eps", 1e-5},
                                 {"tie_word_embeddings", false}});
}

const std::string& plain_dir() {
  static const std::string dir = [] {
    std::string d = at::scratch_dir("audit_drift_plain") + "/model";
    write_synthetic_model(d, small_config(), 5, DType::F32);
    return d;
  }();
  return dir;
}

const ModelWeights& plain_weights() {
  static const ModelWeights w = load_weights(plain_dir());
  return w;
}

Seed test_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(i * 13 + 5);
  return s;
}

struct Obf {
  ModelWeights w;
  std::vector<int64_t> tau;
};

// The public model drifted by eps (kind), then obfuscated with params.
Obf drifted_obf(const std::string& name, double eps, DriftKind kind, const ObfuscationParams& p) {
  const std::string root = at::scratch_dir("audit_drift_" + name);
  DriftOptions d;
  d.eps = eps;
  d.kind = kind;
  d.rank = 4;
  write_drifted_model(plain_dir(), root + "/drifted", d);
  ObfuscateOptions opt;
  opt.params = p;
  opt.dtype = DType::F32;
  obfuscate_model(root + "/drifted", test_seed(), root + "/obf", opt);
  return {load_weights(root + "/obf"), derive_tau(test_seed(), kVocab)};
}

std::vector<int32_t> all_ids() {
  std::vector<int32_t> v(kVocab);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

AttackResult run_nn(const Obf& o, bool robust, const Mechanism& mech) {
  const auto all = all_ids();
  WeightAttackOptions opt;
  opt.mech = mech;
  opt.nn_robust = robust;
  const VocabAttack a = nn_attack(plain_weights(), o.w, make_query(o.tau, all, all), opt);
  return score_vocab_attack(a, "test", o.tau, all, all);
}

ObfuscationParams report_defaults() {
  ObfuscationParams p;  // lambda .3, alpha_e 1, alpha_h .2, beta 8; h 32 at this size
  p.expansion = 32;
  return p;
}

}  // namespace

TEST(AuditDrift, WriterRealisesTheRequestedDriftOnLayerWeightsOnly) {
  const std::string root = at::scratch_dir("audit_drift_writer");
  DriftOptions d;
  d.eps = 0.1;
  const double got = write_drifted_model(plain_dir(), root + "/g", d);
  EXPECT_NEAR(got, 0.1, 0.01);
  d.kind = DriftKind::LowRank;
  d.rank = 2;
  EXPECT_NEAR(write_drifted_model(plain_dir(), root + "/l", d), 0.1, 1e-3);  // exact per tensor
  const ModelWeights g = load_weights(root + "/g"), l = load_weights(root + "/l");
  const ModelWeights& P = plain_weights();
  EXPECT_EQ(g.embed.data, P.embed.data);  // vocabulary matrices untouched without `vocab`
  EXPECT_EQ(g.layers[0].ffn_norm.data, P.layers[0].ffn_norm.data);
  EXPECT_NE(g.layers[1].w_down.data, P.layers[1].w_down.data);
  // Low rank: the difference of a 160 x 64 gate has rank 2 (its third singular direction is empty):
  // the Gram matrix of the difference has two non-negligible eigenvalues, i.e. trace^2 / |G|_F^2 <= 2.
  const Tensor& a = l.layers[0].w_gate;
  const Tensor& b = P.layers[0].w_gate;
  std::vector<double> G(64 * 64, 0.0);
  for (int64_t r = 0; r < a.rows(); ++r)
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t j = 0; j < 64; ++j)
        G[size_t(i * 64 + j)] += double(a.at(r, i) - b.at(r, i)) * double(a.at(r, j) - b.at(r, j));
  double tr = 0, fro = 0;
  for (int64_t i = 0; i < 64; ++i) tr += G[size_t(i * 65)];
  for (double x : G) fro += x * x;
  EXPECT_LE(tr * tr / fro, 2.0 + 1e-3);
  EXPECT_GT(tr * tr / fro, 1.0);
  // Refuses an existing output; unknown kinds are usage errors.
  EXPECT_THROW(write_drifted_model(plain_dir(), root + "/g", d), Error);
  EXPECT_THROW(parse_drift_kind("lora", "--kind"), Error);
}

TEST(AuditDrift, TensorDriftIsZeroOnAnExactObfuscationAndEpsWhenDrifted) {
  const Mechanism none{0, 0, false};
  const AttackResult clean = run_nn(drifted_obf("exact0", 0.0, DriftKind::Gaussian, ObfuscationParams::exact()), true, none);
  EXPECT_GT(clean.ttrsr, 0.99);
  const auto& d0 = clean.details["tensor_drift"];
  EXPECT_LT(d0["body"].get<double>(), 1e-3);
  EXPECT_LT(d0["embedding"]["relative_residual"].get<double>(), 1e-3);
  EXPECT_LT(d0["head"]["relative_residual"].get<double>(), 1e-3);
  for (const char* t : {"q", "k", "v", "o", "gate", "up", "down"})
    EXPECT_LT(d0["layers"][1][t].get<double>(), 1e-3) << t;

  const AttackResult drifted =
      run_nn(drifted_obf("exact10", 0.1, DriftKind::Gaussian, ObfuscationParams::exact()), true, none);
  const auto& d1 = drifted.details["tensor_drift"];
  // FFN tensors: compared channel for channel, the whole drift shows.
  for (const char* t : {"gate", "up", "down"}) {
    EXPECT_GT(d1["layers"][0][t].get<double>(), 0.085) << t;
    EXPECT_LT(d1["layers"][0][t].get<double>(), 0.115) << t;
  }
  // Attention: the fitted per-head map absorbs d_h / d = 1/4 of the drift's energy.
  for (const char* t : {"q", "k", "v", "o"}) {
    EXPECT_GT(d1["layers"][1][t].get<double>(), 0.07) << t;
    EXPECT_LT(d1["layers"][1][t].get<double>(), 0.11) << t;
  }
  // Not drifted itself: what remains is the alignment error the readers' drift leaves in the key fit.
  EXPECT_LT(d1["embedding"]["relative_residual"].get<double>(), 0.1);
}

TEST(AuditNn, RobustAlignmentSurvivesDriftThatBreaksTheClassicOne) {
  // The report's defaults on a model whose layer tensors drifted by 30% along rank-4 directions
  // (a fine-tune's shape): the vocabulary Gram no longer matches channel for channel, the classic
  // single-layer fit loses the key matrix; the robust alignment starts from the reader x writer
  // Gram as well and recovers the FFN permutation and every token.
  const Obf o = drifted_obf("nn_lowrank30", 0.3, DriftKind::LowRank, report_defaults());
  const Mechanism mech{1.0, 0.2, false};
  const AttackResult classic = run_nn(o, false, mech);
  const AttackResult robust = run_nn(o, true, mech);
  EXPECT_GT(robust.ttrsr, 0.95);
  EXPECT_LT(classic.ttrsr, 0.5);
  // The drift it reports for the FFN tensors is the drift applied (rank 4 stays whole through the
  // channel-by-channel comparison).
  const auto& layer0 = robust.details["tensor_drift"]["layers"][0];
  for (const char* t : {"gate", "down"}) {
    EXPECT_GT(layer0[t].get<double>(), 0.25) << t;
    EXPECT_LT(layer0[t].get<double>(), 0.35) << t;
  }
}
