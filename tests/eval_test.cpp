// The accuracy audit (issue 6): scores, windows, the per-layer attribution, the frontier join,
// profiles and the adapted-model record check.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/audit/eval.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/formats/safetensors.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;

namespace {

Seed test_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(i * 29 + 7);
  return s;
}

std::string tiny_model(const std::string& name) {
  const std::string dir = aloepri::testing::scratch_dir(name) + "/model";
  SynthOptions so;
  so.family = Family::Llama;
  so.preset = "tiny";
  so.vocab_dir = aloepri::testing::vocab_dir("llama2");
  so.seed = 5;
  synthesize(so, dir);
  return dir;
}

// Obfuscates and records the run in a key file (what `aloepri obfuscate` does).
std::string obfuscate_with_key(const std::string& plain, const std::string& out, const std::string& key_path,
                               const ObfuscationParams& p) {
  ObfuscateOptions opt;
  opt.params = p;
  ObfuscateResult r = obfuscate_model(plain, test_seed(), out, opt);
  KeyFile k;
  k.seed = test_seed();
  ObfuscationRecord rec;
  rec.plain_fingerprint = r.plain_fingerprint;
  rec.obf_fingerprint = r.obf_fingerprint;
  rec.vocab_size = r.vocab_size;
  rec.params = r.record;
  k.record = rec;
  k.save(key_path, true);
  return out;
}

std::string random_ids_file(const std::string& dir, int64_t n, int64_t vocab) {
  const std::string f = dir + "/ids.bin";
  RngStream r(test_seed(), "test/ids");
  std::string b;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t v = uint16_t(r.below(uint64_t(vocab)));
    b.push_back(char(v & 0xff));
    b.push_back(char(v >> 8));
  }
  std::ofstream(f, std::ios::binary) << b;
  return f;
}

// An eval of dir/obf (key dir/k.key) against `plain` over n_ids random ids, in dir/work.
eval::EvalConfig eval_config(const std::string& plain, const std::string& dir, const std::string& obf, int64_t n_ids) {
  eval::EvalConfig c;
  c.plain_dir = plain;
  c.obf_dir = obf;
  c.key_path = dir + "/k.key";
  c.text_file = random_ids_file(dir, n_ids, 32000);
  c.work_dir = dir + "/work";
  return c;
}

}  // namespace

TEST(Eval, SpreadWindowsCoverTheTextAndCountTargets) {
  std::vector<int64_t> ids(10000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int64_t(i);
  auto w = eval::spread_windows(ids, 1000, 256);
  ASSERT_EQ(w.size(), 4u);
  for (auto& x : w) EXPECT_EQ(x.size(), 256u);
  EXPECT_EQ(w[1].front(), (10000 - 256) / 3);
  EXPECT_EQ(w.front().front(), 0);
  EXPECT_EQ(w.back().front(), 10000 - 256);  // the last window starts at the end of the text
  EXPECT_THROW(eval::spread_windows(ids, 1, 256), Error);
}

TEST(Eval, ScoreAccumulatorReadsObfuscatedLogitsThroughTau) {
  const std::vector<int64_t> tau = {2, 0, 3, 1};  // tau[plain] = obf
  eval::ScoreAccumulator same(tau), other(tau);
  const double plain[4] = {1.0, 3.0, 0.5, -1.0};
  double obf[4];
  for (int y = 0; y < 4; ++y) obf[tau[size_t(y)]] = plain[y];
  same.add(plain, obf, 1);
  auto j = same.to_json();
  EXPECT_NEAR(j["kl_mean"].get<double>(), 0.0, 1e-12);
  EXPECT_EQ(j["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(j["top1_plain"].get<double>(), 1.0);
  EXPECT_EQ(j["top1_obf"].get<double>(), 1.0);
  EXPECT_NEAR(j["ppl_plain"].get<double>(), j["ppl_obf"].get<double>(), 1e-12);
  // Obfuscated model prefers plaintext token 0 instead of 1: a top-1 loss and a positive KL.
  double obf2[4];
  for (int y = 0; y < 4; ++y) obf2[tau[size_t(y)]] = plain[y];
  obf2[tau[0]] = 5.0;
  other.add(plain, obf2, 1);
  auto k = other.to_json();
  EXPECT_GT(k["kl_mean"].get<double>(), 0.1);
  EXPECT_EQ(k["top1_obf"].get<double>(), 0.0);
  EXPECT_EQ(k["rel_loss"].get<double>(), 1.0);
  other.add_greedy({1, 2, 3, 4}, {1, 2, 0, 4});
  EXPECT_NEAR(other.to_json()["greedy_agreement"].get<double>(), 0.75, 1e-12);
  EXPECT_NEAR(other.to_json()["greedy_first_divergence_mean"].get<double>(), 2.0, 1e-12);
}

TEST(Eval, ExactObfuscationHasNoLossAndNoResidualError) {
  const std::string plain = tiny_model("eval_exact");
  const std::string dir = aloepri::testing::scratch_dir("eval_exact_run");
  auto p = ObfuscationParams::exact();
  obfuscate_with_key(plain, dir + "/obf", dir + "/k.key", p);
  auto c = eval_config(plain, dir, dir + "/obf", 2000);
  c.tokens = 128;
  c.window = 64;
  c.greedy_tokens = 8;
  c.greedy_prompts = 1;
  auto r = eval::run_eval(c);
  const auto& s = r["engines"]["reference"];
  EXPECT_EQ(s["targets"].get<int64_t>(), 2 * 63);
  EXPECT_LT(s["kl_mean"].get<double>(), 1e-9);
  EXPECT_EQ(s["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(s["greedy_agreement"].get<double>(), 1.0);
  ASSERT_EQ(r["layers"].size(), 1u);  // exact setting in f32: nothing to attribute
  const auto e = r["layers"][0]["rel_err"].get<std::vector<double>>();
  ASSERT_EQ(int64_t(e.size()), r["model_config"]["layers"].get<int64_t>() + 1);
  for (double x : e) EXPECT_LT(x, 1e-5);
  EXPECT_NE(eval::render_html(r).find("<svg"), std::string::npos);
}

TEST(Eval, AttributionSeparatesNoiseNormAndBlockPerm) {
  const std::string plain = tiny_model("eval_attr");
  const std::string dir = aloepri::testing::scratch_dir("eval_attr_run");
  ObfuscationParams p;  // the report's parameters
  p.alpha_e = 0.5;
  p.expansion = 16;
  obfuscate_with_key(plain, dir + "/obf", dir + "/k.key", p);
  auto c = eval_config(plain, dir, dir + "/obf", 2000);
  c.tokens = 96;
  c.window = 48;
  c.greedy_tokens = 4;
  c.greedy_prompts = 1;
  auto r = eval::run_eval(c);
  std::map<std::string, nlohmann::json> by;
  for (auto& v : r["layers"]) by[v["name"].get<std::string>()] = v;
  ASSERT_TRUE(by.count("as served") && by.count("noise only") && by.count("norm (key matrices, kappa) only") &&
              by.count("RoPE block permutation only"));
  EXPECT_EQ(by.count("full, f32"), 0u);  // the synthetic model is f32 already
  // Embedding rows: noise alpha_e * global std against rows of about that std: error ~ alpha_e.
  const double noise_emb = by["noise only"]["rel_err"][0].get<double>();
  EXPECT_GT(noise_emb, 0.25);
  EXPECT_LT(noise_emb, 1.0);
  // BlockPerm and the key matrices leave the embedding exact (read back through Q).
  EXPECT_LT(by["RoPE block permutation only"]["rel_err"][0].get<double>(), 1e-5);
  EXPECT_LT(by["norm (key matrices, kappa) only"]["rel_err"][0].get<double>(), 1e-4);
  // ... but not the layers: BlockPerm moves RoPE frequencies, kappa is approximate.
  EXPECT_GT(by["RoPE block permutation only"]["rel_err"][1].get<double>(), 1e-6);
  EXPECT_GT(by["norm (key matrices, kappa) only"]["rel_err"][1].get<double>(), 1e-6);
  // Noise dominates the full setting.
  EXPECT_GT(by["as served"]["scores"]["kl_mean"].get<double>(),
            by["RoPE block permutation only"]["scores"]["kl_mean"].get<double>());
  EXPECT_GT(by["noise only"]["scores"]["kl_mean"].get<double>(),
            by["norm (key matrices, kappa) only"]["scores"]["kl_mean"].get<double>());
  EXPECT_EQ(eval::params_from_json(r["params"]).alpha_e, 0.5);
}

TEST(Eval, KeyOfAnotherModelIsRefused) {
  const std::string plain = tiny_model("eval_mismatch");
  const std::string dir = aloepri::testing::scratch_dir("eval_mismatch_run");
  obfuscate_with_key(plain, dir + "/a", dir + "/k.key", ObfuscationParams::exact());
  auto p = ObfuscationParams::exact();
  p.alpha_h = 0.1;
  ObfuscateOptions opt;
  opt.params = p;
  obfuscate_model(plain, test_seed(), dir + "/b", opt);  // not recorded in the key
  const auto c = eval_config(plain, dir, dir + "/b", 500);
  try {
    eval::run_eval(c);
    FAIL() << "expected a key mismatch";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitKeyMismatch);
  }
}

TEST(Eval, FrontierJoinsAttackFiguresByParameters) {
  auto point = [](double ae, double loss) {
    nlohmann::json p;
    p["params"] = ObfuscationParams().to_json();
    p["params"]["alpha_e"] = ae;
    p["engines"]["reference"] = {{"rel_loss", loss}, {"kl_mean", loss}, {"top1_agreement", 1 - loss},
                                 {"top1_plain", 0.2}, {"top1_obf", 0.2 * (1 - loss)}, {"greedy_agreement", 1.0}};
    p["tags"] = {{"sweep", "alpha_e"}, {"x", "alpha_e"}};
    return p;
  };
  std::vector<nlohmann::json> pts = {point(0.25, 0.01), point(0.5, 0.05), point(1.0, 0.25), point(0.75, 0.3)};
  // Without attack figures: accuracy only, goal not judged.
  auto f0 = eval::frontier(pts, nullptr);
  EXPECT_TRUE(f0["frontier"].empty());
  EXPECT_TRUE(f0["goal"]["met"].is_null());
  EXPECT_NE(eval::render_frontier_html(f0).find("No attack figures"), std::string::npos);
  // Attack figures keyed by parameters (alpha_e 0.75 is dominated by alpha_e 1.0).
  nlohmann::json attacks = nlohmann::json::array();
  for (auto [ae, vma, nn] : std::vector<std::tuple<double, double, double>>{
           {0.25, 0.24, 0.02}, {0.5, 0.05, 0.01}, {0.75, 0.001, 0.03}, {1.0, 0.0, 0.001}}) {
    nlohmann::json e;
    e["params"] = ObfuscationParams().to_json();
    e["params"]["alpha_e"] = ae;
    e["attacks"] = {{{"attack", "VMA"}, {"ttrsr", vma}}, {{"attack", "NN"}, {"ttrsr", nn}}};
    attacks.push_back(e);
  }
  // The audit command's layout for one of them: {"meta": {"params"}, "results"}.
  nlohmann::json audit_style = {{"meta", {{"params", attacks[3]["params"]}}}, {"results", attacks[3]["attacks"]}};
  attacks.erase(3);
  auto f = eval::frontier(pts, nlohmann::json{{"runs", attacks}, {"audit", audit_style}});
  EXPECT_EQ(f["attack_entries"].get<int>(), 4);
  EXPECT_NEAR(f["points"][0]["worst_attack"].get<double>(), 0.24, 1e-12);
  EXPECT_EQ(f["points"][0]["worst_attack_name"], "VMA");
  EXPECT_NEAR(f["points"][3]["worst_attack"].get<double>(), 0.03, 1e-12);
  EXPECT_EQ(f["frontier"], nlohmann::json({2, 1, 0}));  // by worst recovery; point 3 dominated
  EXPECT_EQ(f["goal"]["best_point"].get<int>(), 1);
  EXPECT_FALSE(f["goal"]["met"].get<bool>());  // 5% loss at the point where attacks are <= 5%
  EXPECT_NE(eval::render_frontier_html(f).find("<svg"), std::string::npos);
  // Leaving VMA out: the alpha_e .25 point's worst attack is NN (2%), and it joins the goal.
  auto g = eval::frontier(pts, nlohmann::json{{"runs", attacks}, {"audit", audit_style}}, {"VMA"});
  EXPECT_NEAR(g["points"][0]["worst_attack"].get<double>(), 0.02, 1e-12);
  EXPECT_EQ(g["goal"]["best_point"].get<int>(), 0);
  EXPECT_TRUE(g["goal"]["met"].get<bool>());
}

TEST(Eval, ProfilesAndParamsRoundTrip) {
  const auto paper = ObfuscationParams::profile("paper");
  EXPECT_EQ(paper.to_json(), ObfuscationParams().to_json());
  EXPECT_TRUE(ObfuscationParams::profile("exact").is_exact_setting());
  const auto d = ObfuscationParams::profile("noise");
  EXPECT_FALSE(d.is_exact_setting());
  EXPECT_EQ(d.alpha_e, 0.5);
  EXPECT_EQ(eval::params_from_json(d.to_json()).to_json(), d.to_json());
  EXPECT_THROW(ObfuscationParams::profile("nope"), Error);
  // The former default's name is refused, not redefined: an old command line must not silently
  // obfuscate without noise, and the message names both replacements.
  try {
    ObfuscationParams::profile("default");
    ADD_FAILURE() << "profile 'default' accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'exact'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'noise'"), std::string::npos) << e.what();
  }
  // value_cond (issue 7): recorded and read back; a record without it (older keys) means 0,
  // the report's Gaussian value maps, so such keys reproduce their models.
  EXPECT_EQ(paper.value_cond, 0.0);  // the report's draw; noise and exact: cond 4 (docs/RESULTS.md "Well-conditioned value maps")
  EXPECT_EQ(d.value_cond, 4.0);
  EXPECT_EQ(ObfuscationParams::profile("exact").value_cond, 4.0);
  ObfuscationParams v = d;
  v.value_cond = 2.5;
  EXPECT_EQ(v.to_json()["value_cond"].get<double>(), 2.5);
  EXPECT_EQ(eval::params_from_json(v.to_json()).value_cond, 2.5);
  auto old_record = v.to_json();
  old_record.erase("value_cond");
  EXPECT_EQ(eval::params_from_json(old_record).value_cond, 0.0);
  EXPECT_EQ(eval::params_from_json(old_record).alpha_e, v.alpha_e);
}

TEST(Eval, AdaptedModelNeedsItsKeyAndNoiseAndTheRecordIsNotServed) {
  const std::string plain = tiny_model("eval_adapted");
  const std::string dir = aloepri::testing::scratch_dir("eval_adapted_run");
  // Mark the model as adapted to test_seed()'s noise at alpha_e .5, alpha_h .2.
  nlohmann::json cfg = nlohmann::json::parse(read_file(plain + "/config.json"));
  cfg["aloepri_adapted"] = {{"key_id", adaptation_key_id(test_seed())}, {"alpha_e", 0.5}, {"alpha_h", 0.2},
                            {"noise_scale", "global"}};
  write_file_atomic(plain + "/config.json", cfg.dump(2), true);
  auto p = ObfuscationParams::exact();
  p.alpha_e = 0.5;
  p.alpha_h = 0.2;
  ObfuscateOptions opt;
  opt.params = p;
  obfuscate_model(plain, test_seed(), dir + "/ok", opt);
  const auto out_cfg = nlohmann::json::parse(read_file(dir + "/ok/config.json"));
  EXPECT_FALSE(out_cfg.contains("aloepri_adapted"));
  Seed other = test_seed();
  other[0] ^= 1;
  EXPECT_NE(adaptation_key_id(other), adaptation_key_id(test_seed()));
  try {
    obfuscate_model(plain, other, dir + "/wrong_key", opt);
    FAIL() << "another key must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitKeyMismatch);
  }
  opt.params.alpha_e = 0.75;
  EXPECT_THROW(obfuscate_model(plain, test_seed(), dir + "/wrong_noise", opt), Error);
}

// ---- Private whole-model adaptation (issue 14): a checkpoint whose embedding/head already carry
// the key's noise draw (aloe-adapt --train-vocab). The obfuscator must add that noise once, never
// twice, and refuse records it cannot honour.

namespace {

// A copy of `plain` whose embedding and head carry `seed`'s noise draw at (ae, ah) — exactly the
// draw obfuscate_model adds (identity tau and key matrix through transform_vocab_matrix, as
// aloe-adapt does) — with an "aloepri_adapted" record; where == "" leaves emb_head_noise out.
std::string noised_copy(const std::string& plain, const std::string& dir, const Seed& seed, double ae, double ah,
                        const std::string& where, bool add_noise = true) {
  HFModel m(plain);
  const ModelConfig& c = m.config();
  const int64_t n = c.vocab_size, d = c.hidden_size;
  std::vector<int64_t> id(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) id[size_t(i)] = i;
  Tensor I({d, d});
  for (int64_t i = 0; i < d; ++i) I.at(i, i) = 1.0f;
  auto draw = [&](const Tensor& W, double alpha, const std::string& stream) {
    if (!add_noise) return W;
    RngStream rng(seed, stream);
    auto fetch = [&W](int64_t r0, int64_t k, float* dst) {
      std::copy(W.ptr() + r0 * W.cols(), W.ptr() + (r0 + k) * W.cols(), dst);
    };
    return obf::transform_vocab_matrix(n, d, fetch, id, alpha, obf::NoiseScale::Global, rng, {}, I, false);
  };
  fs::create_directories(dir);
  {
    SafetensorsWriter w(dir);
    const auto names = m.weights().names();
    std::vector<std::pair<std::string, Tensor>> ts;
    for (const auto& name : names) {
      Tensor t = m.tensor_f32(name);
      if (name == tensor_names::embed()) t = draw(t, ae, "noise/embed");
      if (name == tensor_names::lm_head()) t = draw(t, ah, "noise/head");
      ts.push_back({name, std::move(t)});
    }
    for (auto& [name, t] : ts) w.add({name, DType::F32, t.shape});
    for (auto& [name, t] : ts) w.write_f32(name, t.ptr(), size_t(t.numel()));
    w.finish();
  }
  nlohmann::json cfg = nlohmann::json::parse(read_file(plain + "/config.json"));
  cfg["aloepri_adapted"] = {{"key_id", adaptation_key_id(seed)}, {"alpha_e", ae}, {"alpha_h", ah},
                            {"noise_scale", "global"}};
  if (!where.empty()) cfg["aloepri_adapted"]["emb_head_noise"] = where;
  write_file_atomic(dir + "/config.json", cfg.dump(2), true);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    if (fs::is_regular_file(plain + "/" + f)) fs::copy_file(plain + "/" + f, dir + "/" + f);
  return dir;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape, b.shape);
  double m = 0;
  for (size_t i = 0; i < a.data.size() && i < b.data.size(); ++i) m = std::max(m, double(std::fabs(a.data[i] - b.data[i])));
  return m;
}

ObfuscateOptions noisy_opts(double ae, double ah) {
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::profile("noise");
  opt.params.alpha_e = ae;
  opt.params.alpha_h = ah;
  opt.dtype = DType::F32;
  opt.force = true;
  return opt;
}

}  // namespace

TEST(Eval, NoiseInCheckpointIsAddedOnceNotTwice) {
  const std::string plain = tiny_model("adapt_vocab_plain");
  ASSERT_FALSE(HFModel(plain).config().tie_word_embeddings);
  const std::string dir = aloepri::testing::scratch_dir("adapt_vocab_run");
  const double ae = 1.5, ah = 0.7;
  const ObfuscateOptions opt = noisy_opts(ae, ah);
  // Reference: the public model obfuscated with the key's noise.
  obfuscate_model(plain, test_seed(), dir + "/ref", opt);
  // The same draw already in the checkpoint, declared: only the exact transforms are applied.
  const std::string in_ck = noised_copy(plain, dir + "/in_ck", test_seed(), ae, ah, "in_checkpoint");
  ObfuscateResult r = obfuscate_model(in_ck, test_seed(), dir + "/obf_in_ck", opt);
  EXPECT_EQ(r.record.value("emb_head_noise", std::string()), "in_checkpoint");
  HFModel ref(dir + "/ref"), got(dir + "/obf_in_ck");
  for (const auto& name : {tensor_names::embed(), tensor_names::lm_head(), tensor_names::layer(0, "mlp.gate_proj.weight")})
    EXPECT_LE(max_abs_diff(ref.tensor_f32(name), got.tensor_f32(name)), 1e-6) << name;
  EXPECT_FALSE(nlohmann::json::parse(read_file(dir + "/obf_in_ck/config.json")).contains("aloepri_adapted"));
  // The same checkpoint declared the old way (the obfuscator adds the noise): doubled noise, so
  // the embedding differs from the reference by about one draw (this is what the field prevents).
  const std::string twice = noised_copy(plain, dir + "/twice", test_seed(), ae, ah, "obfuscate");
  obfuscate_model(twice, test_seed(), dir + "/obf_twice", opt);
  HFModel tw(dir + "/obf_twice");
  const Tensor e_ref = ref.tensor_f32(tensor_names::embed());
  const double scale = std::sqrt(std::inner_product(e_ref.data.begin(), e_ref.data.end(), e_ref.data.begin(), 0.0) /
                                 double(e_ref.numel()));
  EXPECT_GT(max_abs_diff(e_ref, tw.tensor_f32(tensor_names::embed())), 0.5 * scale);
  EXPECT_GT(max_abs_diff(ref.tensor_f32(tensor_names::lm_head()), tw.tensor_f32(tensor_names::lm_head())), 1e-3);
  // No record, no "emb_head_noise" (older records): the obfuscator adds the noise, as before.
  const std::string old = noised_copy(plain, dir + "/old", test_seed(), ae, ah, "", /*add_noise=*/false);
  ObfuscateResult ro = obfuscate_model(old, test_seed(), dir + "/obf_old", opt);
  EXPECT_FALSE(ro.record.contains("emb_head_noise"));
  EXPECT_LE(max_abs_diff(e_ref, HFModel(dir + "/obf_old").tensor_f32(tensor_names::embed())), 1e-6);
}

TEST(Eval, NoiseInCheckpointRecordMismatchesAreRefused) {
  const std::string plain = tiny_model("adapt_vocab_bad");
  const std::string dir = aloepri::testing::scratch_dir("adapt_vocab_bad_run");
  const std::string ck = noised_copy(plain, dir + "/ck", test_seed(), 1.0, 0.5, "in_checkpoint");
  auto code_of = [&](const std::string& model, const Seed& seed, const ObfuscateOptions& o, std::string* msg) {
    try {
      obfuscate_model(model, seed, dir + "/out", o);
    } catch (const Error& e) {
      if (msg) *msg = e.what();
      return int(e.code());
    }
    return 0;
  };
  std::string msg;
  // Other noise parameters than the draw in the checkpoint: the published parameters would lie.
  EXPECT_EQ(code_of(ck, test_seed(), noisy_opts(2.0, 0.5), &msg), kExitUsage);
  EXPECT_NE(msg.find("alpha_e"), std::string::npos) << msg;
  // Another key: its tau/key matrices do not belong to this draw.
  Seed other = test_seed();
  other[3] ^= 4;
  EXPECT_EQ(code_of(ck, other, noisy_opts(1.0, 0.5), &msg), kExitKeyMismatch);
  // An unknown value of the field.
  const std::string bogus = noised_copy(plain, dir + "/bogus", test_seed(), 1.0, 0.5, "trained-twice");
  EXPECT_EQ(code_of(bogus, test_seed(), noisy_opts(1.0, 0.5), &msg), kExitBadInput);
  EXPECT_NE(msg.find("emb_head_noise"), std::string::npos) << msg;
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  // A tied model cannot carry a separately noised head.
  const std::string tied = dir + "/tied";
  {
    fs::create_directories(tied);
    HFModel m(ck);
    SafetensorsWriter w(tied);
    std::vector<std::string> names;
    for (const auto& name : m.weights().names())
      if (name != tensor_names::lm_head()) names.push_back(name);
    std::vector<Tensor> ts;
    for (const auto& name : names) ts.push_back(m.tensor_f32(name));
    for (size_t i = 0; i < names.size(); ++i) w.add({names[i], DType::F32, ts[i].shape});
    for (size_t i = 0; i < names.size(); ++i) w.write_f32(names[i], ts[i].ptr(), size_t(ts[i].numel()));
    w.finish();
    nlohmann::json cfg = nlohmann::json::parse(read_file(ck + "/config.json"));
    cfg["tie_word_embeddings"] = true;
    write_file_atomic(tied + "/config.json", cfg.dump(2), true);
    fs::copy_file(ck + "/tokenizer.json", tied + "/tokenizer.json");
  }
  EXPECT_EQ(code_of(tied, test_seed(), noisy_opts(1.0, 0.5), &msg), kExitBadInput);
  EXPECT_NE(msg.find("lm_head"), std::string::npos) << msg;
  // The matching key and parameters are accepted.
  EXPECT_EQ(code_of(ck, test_seed(), noisy_opts(1.0, 0.5), nullptr), 0);
}
