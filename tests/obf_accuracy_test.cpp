// Accuracy of the approximate settings, measured on the reference forward: KL(plain || obf) per
// position, top-1 agreement (teacher forced) and greedy agreement (32 tokens), for the default
// parameters and for each ingredient alone. Synthetic "small" models (d 256, 4 layers, head_dim
// 32: the dims of method.md's prototype) with real vocabularies. Prints the table recorded in
// docs/RESULTS.md "Covariant obfuscation"; asserts that exact variants agree fully and approximate ones
// stay far from chance.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "aloepri/engine/forward.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/engine/synth.h"
#include "aloepri/client/tokenizer.h"
#include "support/paths.h"

using namespace aloepri;

namespace {

Seed key_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(i * 17 + 3);
  return s;
}

struct Stats {
  double kl = 0, top1 = 0, greedy = 0;
  int64_t top1_hits = 0, top1_total = 0, greedy_hits = 0, first_divergence = 0;
};

Stats measure(ReferenceModel& plain, ReferenceModel& obf, const std::vector<int64_t>& tau,
              const std::vector<int64_t>& ids, const std::vector<int64_t>& prompt) {
  const int64_t n = plain.vocab_size();
  std::vector<int64_t> oids;
  for (auto t : ids) oids.push_back(tau[size_t(t)]);
  plain.reset();
  obf.reset();
  auto lp = plain.forward(ids);
  auto lo = obf.forward(oids);
  Stats s;
  const int64_t T = int64_t(ids.size());
  for (int64_t t = 0; t < T; ++t) {
    const double* a = &lp[size_t(t * n)];
    const double* b = &lo[size_t(t * n)];
    double ma = -1e300, mb = -1e300;
    int64_t ia = 0, ib = 0;
    for (int64_t y = 0; y < n; ++y) {
      if (a[y] > ma) ma = a[y], ia = y;
      if (b[tau[y]] > mb) mb = b[tau[y]], ib = y;
    }
    double za = 0, zb = 0;
    for (int64_t y = 0; y < n; ++y) za += std::exp(a[y] - ma), zb += std::exp(b[tau[y]] - mb);
    const double la = std::log(za), lb = std::log(zb);
    double kl = 0;
    for (int64_t y = 0; y < n; ++y) {
      const double lpa = a[y] - ma - la, lpb = b[tau[y]] - mb - lb;
      kl += std::exp(lpa) * (lpa - lpb);
    }
    s.kl += kl / double(T);
    s.top1_hits += ia == ib;
  }
  s.top1_total = T;
  s.top1 = double(s.top1_hits) / double(T);
  std::vector<int64_t> op;
  for (auto t : prompt) op.push_back(tau[size_t(t)]);
  auto gp = plain.greedy(prompt, 32), go = obf.greedy(op, 32);
  const auto inv = invert_permutation(tau);
  s.first_divergence = 32;
  for (size_t i = 0; i < gp.size(); ++i) {
    const bool eq = inv[size_t(go[i])] == gp[i];
    s.greedy_hits += eq;
    s.greedy += eq / 32.0;
    if (!eq && s.first_divergence == 32) s.first_divergence = int64_t(i);
  }
  return s;
}

// full: every ingredient alone too (ALOEPRI_OBF_FULL=1; by default only the 32k-vocabulary family
// runs, with the short table, so the suite stays fast).
// model_dir empty: a synthesized "small" model of the family with random ids; else that trained
// model with the given real-text ids (first 8 are the greedy prompt, all of them calibrate).
void run_family(const char* name, Family fam, const char* vocab, bool full, const std::string& model_dir = "",
                const std::vector<int64_t>& text_ids = {}) {
  if (std::getenv("ALOEPRI_OBF_FULL")) full = true;
  std::string plain_dir = model_dir;
  if (plain_dir.empty()) {
    plain_dir = aloepri::testing::scratch_dir(std::string("obf_acc_") + name) + "/model";
    SynthOptions so;
    so.family = fam;
    so.preset = "small";
    so.vocab_dir = aloepri::testing::vocab_dir(vocab);
    so.seed = 11;
    synthesize(so, plain_dir);
  }
  ReferenceModel plain = ReferenceModel::load(plain_dir);
  const int64_t n = plain.vocab_size();
  RngStream r(key_seed(), "ids");
  std::vector<int64_t> ids, prompt, calib;
  if (text_ids.empty()) {
    for (int i = 0; i < 48; ++i) ids.push_back(int64_t(r.below(uint64_t(n))));
    for (int i = 0; i < 6; ++i) prompt.push_back(int64_t(r.below(uint64_t(n))));
    for (int i = 0; i < 64; ++i) calib.push_back(int64_t(r.below(uint64_t(n))));
  } else {
    ids = text_ids;
    prompt.assign(text_ids.begin(), text_ids.begin() + 8);
    calib = text_ids;
  }
  const auto tau = derive_tau(key_seed(), n);

  struct V {
    const char* label;
    ObfuscationParams p;
    bool exact;
    bool in_short;  // part of the short table
  };
  const ObfuscationParams E = ObfuscationParams::exact(), D;
  std::vector<V> vs;
  vs.push_back({"exact", E, true, true});
  {
    auto p = E;
    p.alpha_e = D.alpha_e, p.alpha_h = D.alpha_h;
    vs.push_back({"noise only (alpha_e 1, alpha_h .2)", p, false, false});
    p.alpha_e = 0.5;
    vs.push_back({"noise only (alpha_e .5, alpha_h .2)", p, false, false});
  }
  {
    auto p = E;
    p.beta = D.beta;
    vs.push_back({"BlockPerm only (beta 8)", p, false, false});
  }
  {
    auto p = E;
    p.lambda = D.lambda, p.expansion = D.expansion;
    vs.push_back({"keymat paper only, gaussian kappa", p, false, true});
    p.kappa = KappaMode::Calibrated;
    vs.push_back({"keymat paper only, calibrated kappa", p, false, false});
    p.kappa = KappaMode::Gaussian;
    p.keymat = obf::KeymatVariant::ExactNorm;
    vs.push_back({"keymat exact-norm only (h 128)", p, true, true});
  }
  vs.push_back({"defaults (paper, gaussian)", D, false, true});
  {
    auto p = D;
    p.kappa = KappaMode::Calibrated;
    vs.push_back({"defaults, calibrated kappa", p, false, false});
    p = D;
    p.keymat = obf::KeymatVariant::ExactNorm;
    vs.push_back({"defaults, exact-norm keymat", p, false, false});
    p = D;
    p.alpha_e = 0.5;
    vs.push_back({"defaults, alpha_e 0.5", p, false, false});
  }
  if (!model_dir.empty())
    std::printf("\n%s (%s), %zu teacher-forced positions of real text, 32 greedy tokens\n", name, model_dir.c_str(),
                ids.size());
  else
  std::printf("\n%s (synth small: d 256, 4 layers, 8/4 heads, head_dim 32, vocab %ld), 48 teacher-forced "
              "positions, 32 greedy tokens\n",
              name, long(n));
  std::printf("| setting | mean KL(plain||obf) | top-1 agreement | greedy agreement | first divergence |\n");
  std::printf("|---|---|---|---|---|\n");
  int k = 0;
  std::map<std::string, Stats> got;
  for (auto& v : vs) {
    if (!full && !v.in_short) continue;
    const std::string out = aloepri::testing::scratch_dir(std::string("obf_acc_out_") + name + std::to_string(k++)) + "/o";
    ObfuscateOptions opt;
    opt.params = v.p;
    // A bf16 checkpoint would otherwise be re-rounded to bf16 after mixing: keep the transform's
    // own error apart from storage precision.
    if (!model_dir.empty()) opt.dtype = DType::F32;
    if (v.p.kappa == KappaMode::Calibrated) opt.calib_ids = calib;
    obfuscate_model(plain_dir, key_seed(), out, opt);
    ReferenceModel obf = ReferenceModel::load(out);
    Stats s = measure(plain, obf, tau, ids, prompt);
    std::printf("| %s | %.3g | %.3f | %.3f | %ld |\n", v.label, s.kl, s.top1, s.greedy, long(s.first_divergence));
    std::fflush(stdout);
    got[v.label] = s;
    if (v.exact) {
      EXPECT_LT(s.kl, 1e-6) << v.label;
      EXPECT_EQ(s.top1_hits, s.top1_total) << v.label;
      EXPECT_EQ(s.greedy_hits, 32) << v.label;
    } else {
      EXPECT_GT(s.kl, 1e-7) << v.label;  // really approximate
      EXPECT_TRUE(std::isfinite(s.kl)) << v.label;
    }
  }
  if (!model_dir.empty()) {
    // A trained model has margins: the key matrices alone keep nearly every prediction.
    EXPECT_GT(got["keymat paper only, gaussian kappa"].top1, 0.9);
    return;
  }
  // The key matrices alone keep most top-1 predictions even on a random model (no margins).
  EXPECT_GT(got["keymat paper only, gaussian kappa"].top1, 0.5);
  EXPECT_LT(got["keymat paper only, gaussian kappa"].kl, 0.1);
  if (full) {
    EXPECT_GT(got["BlockPerm only (beta 8)"].top1, 0.5);
    // Less noise, less divergence.
    EXPECT_LT(got["noise only (alpha_e .5, alpha_h .2)"].kl, got["noise only (alpha_e 1, alpha_h .2)"].kl);
  }
}

}  // namespace

// The 128k / 151k vocabularies make these slow on a 2-core CI machine (about 2 min each).
TEST(ObfAccuracy, Llama) {
  if (!std::getenv("ALOEPRI_OBF_FULL")) GTEST_SKIP() << "set ALOEPRI_OBF_FULL=1 (slow: 128k vocabulary)";
  run_family("llama", Family::Llama, "llama3", false);
}
TEST(ObfAccuracy, Qwen2) {
  if (!std::getenv("ALOEPRI_OBF_FULL")) GTEST_SKIP() << "set ALOEPRI_OBF_FULL=1 (slow: 151k vocabulary)";
  run_family("qwen2", Family::Qwen2, "qwen3", false);
}
TEST(ObfAccuracy, Mistral) { run_family("mistral", Family::Mistral, "llama2", false); }

// The shipped trained model on real text (the figures in docs/RESULTS.md come from this run with
// ALOEPRI_OBF_FULL=1; by default the short table).
TEST(ObfAccuracy, AloeMini) {
  const std::string dir = aloepri::testing::source_dir() + "/models/aloe-mini";
  const char* text =
      "And God said, Let there be light: and there was light. And God saw the light, that it was good: "
      "and God divided the light from the darkness. And God called the light Day, and the darkness he "
      "called Night. And the evening and the morning were the first day. Call me Ishmael. Some years "
      "ago, never mind how long precisely, having little or no money in my purse, and nothing particular "
      "to interest me on shore, I thought I would sail about a little and see the watery part of the world.";
  auto ids32 = Tokenizer::load(dir).encode(text, true);
  run_family("aloe-mini", Family::Llama, "llama2", false, dir, std::vector<int64_t>(ids32.begin(), ids32.end()));
}
