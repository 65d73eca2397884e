// Qwen3-MoE (issue 16): config, synthetic checkpoints, the reference forward's routed experts
// (checked against a per-token re-implementation here), the GGUF layout llama.cpp's qwen3moe
// loads, and exact obfuscation (router rows permuted by Z_router, each expert its own channel
// keys, the experts' writers sharing the layer's residual map) on the reference forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aloepri/audit/weights.h"
#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/engine/synth.h"
#include "support/llamacpp.h"
#include "support/paths.h"
#include "support/logit_error.h"

using namespace aloepri;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Seed key_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0x5A ^ (i * 31 + 7));
  return s;
}

json moe_config_json() {
  return {{"model_type", "qwen3_moe"},   {"hidden_size", 64},         {"num_hidden_layers", 3},
          {"num_attention_heads", 4},    {"num_key_value_heads", 2},  {"head_dim", 32},
          {"intermediate_size", 96},     {"vocab_size", 1000},        {"num_experts", 6},
          {"num_experts_per_tok", 2},    {"moe_intermediate_size", 24}, {"norm_topk_prob", true},
          {"decoder_sparse_step", 1},    {"mlp_only_layers", {1}}};
}

std::string synth_moe(const std::string& name, bool norm_topk = true, int64_t layers = 2, uint64_t seed = 11,
                      const std::string& vocab = "qwen3") {
  const std::string dir = aloepri::testing::scratch_dir("qwen3moe_" + name) + "/model";
  SynthOptions o;
  o.family = Family::Qwen3Moe;
  o.layers = layers;
  o.heads = 4;
  o.kv_heads = 2;
  o.vocab_dir = aloepri::testing::vocab_dir(vocab);
  o.seed = seed;
  o.norm_topk_prob = norm_topk;
  synthesize(o, dir);
  return dir;
}

std::vector<int64_t> prompt(int64_t n, int64_t len, const char* stream) {
  RngStream r(key_seed(), stream);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < len; ++i) ids.push_back(int64_t(r.below(uint64_t(n))));
  return ids;
}

using test::logit_error;

}  // namespace

TEST(Qwen3MoeConfig, ParsesExpertsAndSparseLayers) {
  const ModelConfig c = ModelConfig::from_json(moe_config_json());
  EXPECT_EQ(c.family, Family::Qwen3Moe);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.num_experts, 6);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 24);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(1));  // mlp_only_layers
  EXPECT_TRUE(c.is_moe_layer(2));
  // Shapes: a dense MLP in layer 1, a router and 6 experts in layers 0 and 2.
  int routers = 0, experts = 0, dense = 0;
  for (const auto& [name, shape] : expected_tensors(c)) {
    if (name == tensor_names::router(0)) EXPECT_EQ(shape, (std::vector<int64_t>{6, 64}));
    if (name == tensor_names::expert(2, 5, tensor_names::ExpertProj::Down)) EXPECT_EQ(shape, (std::vector<int64_t>{64, 24}));
    routers += name.find("mlp.gate.weight") != std::string::npos;
    experts += name.find("mlp.experts.") != std::string::npos;
    dense += name.find("mlp.gate_proj.weight") != std::string::npos && name.find("experts") == std::string::npos;
  }
  EXPECT_EQ(routers, 2);
  EXPECT_EQ(experts, 2 * 6 * 3);
  EXPECT_EQ(dense, 1);
  // decoder_sparse_step 2: layers 1, 3, ... are sparse.
  json j = moe_config_json();
  j["mlp_only_layers"] = json::array();
  j["decoder_sparse_step"] = 2;
  const ModelConfig s = ModelConfig::from_json(j);
  EXPECT_FALSE(s.is_moe_layer(0));
  EXPECT_TRUE(s.is_moe_layer(1));
  EXPECT_FALSE(s.is_moe_layer(2));
  // Round trip through to_json keeps every MoE field.
  const ModelConfig r = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(r.num_experts, c.num_experts);
  EXPECT_EQ(r.num_experts_per_tok, c.num_experts_per_tok);
  EXPECT_EQ(r.moe_intermediate_size, c.moe_intermediate_size);
  EXPECT_EQ(r.norm_topk_prob, c.norm_topk_prob);
  EXPECT_EQ(r.mlp_only_layers, c.mlp_only_layers);
  EXPECT_EQ(r.to_json()["architectures"][0], "Qwen3MoeForCausalLM");
}

TEST(Qwen3MoeConfig, ErrorsNameTheField) {
  auto err = [](json j) {
    try {
      ModelConfig::from_json(j, "cfg.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  json j = moe_config_json();
  j["num_experts_per_tok"] = 7;
  EXPECT_NE(err(j).find("num_experts_per_tok"), std::string::npos) << err(j);
  j = moe_config_json();
  j["mlp_only_layers"] = {3};
  EXPECT_NE(err(j).find("mlp_only_layers"), std::string::npos) << err(j);
  j = moe_config_json();
  j["norm_topk_prob"] = "yes";
  EXPECT_NE(err(j).find("norm_topk_prob"), std::string::npos) << err(j);
  j = moe_config_json();
  j["num_experts"] = 0;
  EXPECT_NE(err(j).find("num_experts"), std::string::npos) << err(j);
}

TEST(Qwen3MoeRouting, TopKTiesAndRenormalisation) {
  const double logits[5] = {0.5, 2.0, 2.0, -1.0, 1.0};
  auto r = route_token(logits, 5, 3, false);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].first, 1);  // tie between 1 and 2: the lower index first
  EXPECT_EQ(r[1].first, 2);
  EXPECT_EQ(r[2].first, 4);
  double z = 0;
  for (double x : logits) z += std::exp(x);
  EXPECT_NEAR(r[0].second, std::exp(2.0) / z, 1e-15);
  auto rn = route_token(logits, 5, 3, true);
  double sum = 0;
  for (auto& [e, w] : rn) sum += w;
  EXPECT_NEAR(sum, 1.0, 1e-15);
  EXPECT_NEAR(rn[2].second, std::exp(1.0) / (2 * std::exp(2.0) + std::exp(1.0)), 1e-15);
}

// The reference forward's sparse layer against a direct per-token evaluation of the HF block
// (softmax, top-k, optional renormalisation, sum of weighted SwiGLU experts), on a one-layer model.
TEST(Qwen3MoeForward, MatchesPerTokenExperts) {
  for (bool norm : {true, false}) {
    const std::string dir = synth_moe(norm ? "fwd_norm" : "fwd_nonorm", norm, 1);
    HFModel m(dir);
    ModelWeights w = ModelWeights::load(m);
    const ModelConfig c = w.config;
    const int64_t d = c.hidden_size, E = c.num_experts, fe = c.moe_intermediate_size;
    // The residual after layer 0 comes out of the hook; W_o = 0 silences attention, so the FFN's
    // input is the embedding row and the whole layer can be recomputed here.
    std::fill(w.layers[0].wo.data.begin(), w.layers[0].wo.data.end(), 0.0f);
    ReferenceModel ref(w);
    std::vector<double> got;
    ref.set_residual_hook([&](int64_t, const std::vector<double>& r) { got = r; });
    const auto ids = prompt(c.vocab_size, 5, "fwd");
    ref.forward(ids);
    ASSERT_EQ(int64_t(got.size()), int64_t(ids.size()) * d);
    double worst = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      std::vector<double> x(static_cast<size_t>(d)), xn(static_cast<size_t>(d));
      for (int64_t k = 0; k < d; ++k) x[k] = w.embed.data[ids[t] * d + k];
      double ss = 0;
      for (double v : x) ss += v * v;
      const double inv = 1 / std::sqrt(ss / double(d) + c.rms_norm_eps);
      for (int64_t k = 0; k < d; ++k) xn[k] = x[k] * inv * w.layers[0].ffn_norm.data[k];
      std::vector<double> logits(static_cast<size_t>(E), 0.0), p(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e)
        for (int64_t k = 0; k < d; ++k) logits[e] += xn[k] * w.layers[0].router.data[e * d + k];
      double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
      for (int64_t e = 0; e < E; ++e) z += (p[e] = std::exp(logits[e] - mx));
      std::vector<int64_t> order(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) order[e] = e;
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
      double top = 0;
      for (int64_t i = 0; i < c.num_experts_per_tok; ++i) top += p[order[i]] / z;
      std::vector<double> y = x;
      for (int64_t i = 0; i < c.num_experts_per_tok; ++i) {
        const int64_t e = order[i];
        const double wt = p[e] / z / (norm ? top : 1.0);
        const ExpertWeights& X = w.layers[0].experts[e];
        std::vector<double> h(static_cast<size_t>(fe));
        for (int64_t f = 0; f < fe; ++f) {
          double g = 0, u = 0;
          for (int64_t k = 0; k < d; ++k) {
            g += xn[k] * X.w_gate.data[f * d + k];
            u += xn[k] * X.w_up.data[f * d + k];
          }
          h[f] = g / (1 + std::exp(-g)) * u;
        }
        for (int64_t k = 0; k < d; ++k) {
          double o = 0;
          for (int64_t f = 0; f < fe; ++f) o += h[f] * X.w_down.data[k * fe + f];
          y[k] += wt * o;
        }
      }
      for (int64_t k = 0; k < d; ++k) worst = std::max(worst, std::abs(y[k] - got[t * d + k]));
    }
    EXPECT_LT(worst, 1e-9) << (norm ? "norm_topk_prob" : "no renormalisation");
  }
}

TEST(Qwen3MoeForward, NormTopkProbChangesTheFunction) {
  // Same weights, the flag flipped: the logits must move (the flag is read and used).
  const std::string dir = synth_moe("flag", true, 2, 21);
  HFModel m(dir);
  ModelWeights w = ModelWeights::load(m);
  ReferenceModel a(w);
  w.config.norm_topk_prob = false;
  ReferenceModel b(w);
  const auto ids = prompt(a.vocab_size(), 4, "flag");
  const auto la = a.forward(ids), lb = b.forward(ids);
  double diff = 0;
  for (size_t i = 0; i < la.size(); ++i) diff = std::max(diff, std::abs(la[i] - lb[i]));
  EXPECT_GT(diff, 1e-3);
}

TEST(Qwen3MoeAudit, LoadingOneModelRefusesSparseLayersNamingTheConfig) {
  // Alone, a MoE checkpoint's sparse layers have no FFN for the weight attacks; one clear usage
  // error, not a missing-tensor error from the middle of the loader. (load_weight_pair pairs them.)
  const std::string dir = synth_moe("audit");
  try {
    audit::load_weights(dir);
    FAIL() << "a MoE checkpoint was accepted by the weight attacks' loader";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("qwen3_moe"), std::string::npos) << msg;
    EXPECT_EQ(e.code(), kExitUsage) << msg;
  }
}

// The attacker's expert pairing (audit/weights.h pair_routed_experts) recovers Z_router from the
// routers and embeddings alone at --exact, and NN then takes the vocabulary through the paired
// experts. Under the noise profile (lambda 0.3, h 128, alpha_e 0.5) the sorted router columns no
// longer pair the experts, and NN takes the vocabulary all the same.
TEST(Qwen3MoeAudit, RouterColumnsPairTheExpertsAndNNFollows) {
  const std::string plain_dir = synth_moe("pair_plain", true, 2, 9);
  const Seed seed = key_seed();
  int variant = 0;
  for (const char* profile : {"exact", "noise"}) {
    const std::string out = aloepri::testing::scratch_dir("qwen3moe_pair_" + std::to_string(variant++)) + "/obf";
    ObfuscateOptions opt;
    opt.params = ObfuscationParams::profile(profile);
    obfuscate_model(plain_dir, seed, out, opt);
    auto [plain, obfw] = audit::load_weight_pair(plain_dir, out);
    ModelWeights p2 = plain, o2 = obfw;
    const auto slots = audit::pair_routed_experts(p2, o2);
    const ModelConfig& c = plain.config;
    int64_t right = 0, total = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const auto mk = obf::draw_moe_keys(seed, l, c.num_experts, c.moe_intermediate_size, opt.params.ffn_scale_range);
      for (int64_t e = 0; e < c.num_experts; ++e) right += slots[size_t(l)][size_t(e)] == mk.expert_slot[size_t(e)];
      total += c.num_experts;
    }
    audit::Query q;
    const auto tau = derive_tau(seed, c.vocab_size);
    for (int64_t y = 0; y < 2000; ++y) q.obf_ids.push_back(int32_t(tau[size_t(y)]));
    audit::WeightAttackOptions wo;
    wo.mech.alpha_e = opt.params.alpha_e;
    wo.mech.alpha_h = opt.params.alpha_h;
    wo.mech.per_row_noise = opt.params.noise_scale == obf::NoiseScale::PerRow;
    const auto a = audit::nn_attack(plain, obfw, q, wo);
    int64_t hit = 0;
    for (int64_t y = 0; y < 2000; ++y) {
      const auto& g = a.guesses[size_t(tau[size_t(y)])];
      hit += !g.empty() && g[0] == y;
    }
    std::printf("qwen3moe %s: experts paired %lld/%lld, NN top-1 %lld/2000\n", profile, (long long)right,
                (long long)total, (long long)hit);
    for (const auto& sl : slots) {  // always a pairing: each slot given to one expert
      std::vector<int64_t> v = sl;
      std::sort(v.begin(), v.end());
      for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i], int64_t(i));
    }
    if (std::string(profile) == "exact") {
      EXPECT_EQ(right, total);  // under noise the pairing fails
    }
    // ... and NN does not need it: its channel matching runs over all E x fe stacked channels,
    // so experts paired wrongly are a permutation of channels like any other.
    EXPECT_GT(hit, 1900) << profile;
  }
}

TEST(Qwen3MoeGguf, StackedExpertsAndKeys) {
  const std::string dir = synth_moe("gguf");
  const std::string out = fs::path(dir).parent_path().string() + "/model.gguf";
  GGUFExportOptions go;
  go.progress = false;
  auto res = export_gguf(HFModel(dir), out, DType::F32, go);
  EXPECT_EQ(res.arch, "qwen3moe");
  const ModelConfig c = HFModel(dir).config();
  gguf::GGUFReader g(out);
  EXPECT_EQ(g.get("general.architecture").as_string(), "qwen3moe");
  EXPECT_EQ(int64_t(g.get("qwen3moe.expert_count").as_u64()), c.num_experts);
  EXPECT_EQ(int64_t(g.get("qwen3moe.expert_used_count").as_u64()), c.num_experts_per_tok);
  EXPECT_EQ(int64_t(g.get("qwen3moe.expert_feed_forward_length").as_u64()), c.moe_intermediate_size);
  EXPECT_EQ(int64_t(g.get("qwen3moe.attention.key_length").as_u64()), c.head_dim);
  EXPECT_EQ(int64_t(g.get("qwen3moe.attention.value_length").as_u64()), c.head_dim);
  const int64_t d = c.hidden_size, E = c.num_experts, fe = c.moe_intermediate_size;
  EXPECT_EQ(g.tensor("blk.1.ffn_gate_inp.weight").ne, (std::vector<int64_t>{d, E}));
  EXPECT_EQ(g.tensor("blk.1.ffn_gate_exps.weight").ne, (std::vector<int64_t>{d, fe, E}));
  EXPECT_EQ(g.tensor("blk.1.ffn_up_exps.weight").ne, (std::vector<int64_t>{d, fe, E}));
  EXPECT_EQ(g.tensor("blk.1.ffn_down_exps.weight").ne, (std::vector<int64_t>{fe, d, E}));
  EXPECT_FALSE(g.has_tensor("blk.0.ffn_gate.weight"));
  // Expert e of the stack is HF expert e: compare the last expert's down projection bytes.
  const Tensor down = HFModel(dir).tensor_f32(tensor_names::expert(1, E - 1, tensor_names::ExpertProj::Down));
  const auto& ti = g.tensor("blk.1.ffn_down_exps.weight");
  const float* stack = reinterpret_cast<const float*>(ti.data);
  for (int64_t i = 0; i < d * fe; ++i) ASSERT_EQ(stack[(E - 1) * d * fe + i], down.data[size_t(i)]) << i;
}

TEST(Qwen3MoeGguf, RefusesWhatLlamaCppCannotServe) {
  // norm_topk_prob false: llama.cpp's qwen3moe always renormalises the top-k weights.
  const std::string dir = synth_moe("gguf_nonorm", false);
  GGUFExportOptions go;
  go.progress = false;
  try {
    export_gguf(HFModel(dir), fs::path(dir).parent_path().string() + "/x.gguf", DType::F32, go);
    ADD_FAILURE() << "exported a model with norm_topk_prob false";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm_topk_prob"), std::string::npos) << e.what();
  }
  go.arch = "llama";
  try {
    export_gguf(HFModel(synth_moe("gguf_llama")), fs::path(dir).parent_path().string() + "/y.gguf", DType::F32, go);
    ADD_FAILURE() << "exported qwen3moe as arch llama";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--arch"), std::string::npos) << e.what();
  }
}

// llama.cpp's qwen3moe graph divides the top-k router weights by their sum whatever the model
// says (build_moe_ffn with norm_w = true), which is why the exporter refuses norm_topk_prob false.
// The weights of a norm_topk_prob-false model, exported under a config that says true, are served
// as the reference computes them with renormalisation and far from how it computes them without.
TEST(Qwen3MoeLlamaCpp, AlwaysRenormalisesTheTopKWeights) {
  std::string why;
  if (!aloepri::testing::harness_installed(&why)) GTEST_SKIP() << "llama.cpp harness not installed: " << why;
  const std::string as_false = synth_moe("renorm_false", false, 2, 9, "llama2");  // 32k ids: all logits cheap
  const std::string as_true = fs::path(as_false).parent_path().string() + "/as_true";
  fs::copy(as_false, as_true, fs::copy_options::recursive);
  json cfg = json::parse(std::ifstream(as_true + "/config.json"));
  ASSERT_EQ(cfg.at("norm_topk_prob"), false);
  cfg["norm_topk_prob"] = true;
  std::ofstream(as_true + "/config.json") << cfg.dump(2);
  const std::string gguf = fs::path(as_false).parent_path().string() + "/served.gguf";
  GGUFExportOptions go;
  go.progress = false;
  export_gguf(HFModel(as_true), gguf, DType::F32, go);
  const std::vector<int64_t> ids = {1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889};
  const auto cpp = aloepri::testing::run_harness_eval(gguf, ids, 16, true);
  const auto ref_true = aloepri::testing::run_reference_forward(as_true, ids, 16, true);
  const auto ref_false = aloepri::testing::run_reference_forward(as_false, ids, 16, true);
  const double rel_true = aloepri::testing::compare_logits(cpp.logits, ref_true.logits).rel;
  const double rel_false = aloepri::testing::compare_logits(cpp.logits, ref_false.logits).rel;
  std::printf("llama.cpp qwen3moe vs reference: renormalised %.3e, not renormalised %.3e\n", rel_true, rel_false);
  EXPECT_LE(rel_true, 1e-4);
  EXPECT_EQ(cpp.greedy, ref_true.greedy);
  EXPECT_GT(rel_false, 1e-2);
}

// Exact obfuscation on the reference forward: logits at tau(y) equal the plaintext logits of y
// within 1e-5 relative; greedy decodes to the same tokens; the router's rows are really permuted.
TEST(Qwen3MoeObfuscate, ExactOnTheReferenceForward) {
  const std::string plain_dir = synth_moe("obf_plain", true, 2, 5);
  const Seed seed = key_seed();
  ObfuscationParams exact_norm = ObfuscationParams::exact();
  exact_norm.keymat = obf::KeymatVariant::ExactNorm;
  exact_norm.expansion = 16;
  int variant = 0;
  for (const ObfuscationParams& p : {ObfuscationParams::exact(), exact_norm}) {
    const std::string out = aloepri::testing::scratch_dir("qwen3moe_obf_" + std::to_string(variant++)) + "/obf";
    ObfuscateOptions opt;
    opt.params = p;
    obfuscate_model(plain_dir, seed, out, opt);
    ReferenceModel plain = ReferenceModel::load(plain_dir);
    ReferenceModel obf = ReferenceModel::load(out);
    EXPECT_EQ(obf.config().num_experts, plain.config().num_experts);
    EXPECT_EQ(obf.config().hidden_size, plain.config().hidden_size + 2 * p.expansion);
    const auto tau = derive_tau(seed, plain.vocab_size());
    const double err = logit_error(plain, obf, prompt(plain.vocab_size(), 12, "obf"), tau);
    std::printf("qwen3moe exact h=%lld: max |logit_obf(tau y) - logit(y)| / max|logit| = %.2e\n",
                (long long)p.expansion, err);
    EXPECT_LT(err, 1e-5);
    const auto pr = prompt(plain.vocab_size(), 6, "greedy");
    std::vector<int64_t> opr;
    for (auto t : pr) opr.push_back(tau[size_t(t)]);
    const auto gp = plain.greedy(pr, 24), go = obf.greedy(opr, 24);
    const auto inv = invert_permutation(tau);
    ASSERT_EQ(gp.size(), go.size());
    for (size_t i = 0; i < gp.size(); ++i) EXPECT_EQ(inv[size_t(go[i])], gp[i]) << "greedy token " << i;
  }
  // The key's expert permutation is not the identity for this key, so the test above exercises
  // the relabelling (a stacking error would show as a logit error).
  const auto mk = obf::draw_moe_keys(seed, 0, 8, 32, 1.0);
  int moved = 0;
  for (int64_t e = 0; e < 8; ++e) moved += mk.expert_slot[size_t(e)] != e;
  EXPECT_GT(moved, 0);
  // Per-expert streams: two experts of one layer get different channel permutations.
  EXPECT_NE(mk.experts[0].slot, mk.experts[1].slot);
}

TEST(Qwen3MoeObfuscate, NoiseProfileRunsAndCalibratedKappaIsRefused) {
  const std::string plain_dir = synth_moe("noise_plain", true, 2, 5);
  const Seed seed = key_seed();
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::profile("noise");
  const std::string out = aloepri::testing::scratch_dir("qwen3moe_noise") + "/obf";
  ObfuscateResult r = obfuscate_model(plain_dir, seed, out, opt);
  ReferenceModel plain = ReferenceModel::load(plain_dir);
  ReferenceModel obf = ReferenceModel::load(out);
  EXPECT_EQ(obf.config().hidden_size, r.obf_hidden);
  EXPECT_GT(r.obf_hidden, plain.config().hidden_size);  // the noise profile expands d
  const auto tau = derive_tau(seed, plain.vocab_size());
  const double err = logit_error(plain, obf, prompt(plain.vocab_size(), 12, "noise"), tau);
  std::printf("qwen3moe noise profile: max relative logit error %.3e\n", err);
  EXPECT_TRUE(std::isfinite(err));
  EXPECT_GT(err, 1e-4);  // noisy, not exact
  ObfuscateOptions cal;
  cal.params = ObfuscationParams::exact();
  cal.params.kappa = KappaMode::Calibrated;
  cal.calib_ids = {1, 2, 3};
  try {
    obfuscate_model(plain_dir, seed, aloepri::testing::scratch_dir("qwen3moe_cal") + "/obf", cal);
    ADD_FAILURE() << "calibrated kappa accepted for qwen3_moe";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kappa calibrated"), std::string::npos) << e.what();
  }
}

// Routing agreement: the share of (layer, position) whose set of chosen experts in the obfuscated
// model, mapped back through Z_router, is the plaintext model's set.
namespace {
double routing_agreement(const std::string& plain_dir, const std::string& obf_dir, const Seed& seed,
                         const std::vector<int64_t>& ids, double* logit_err) {
  ReferenceModel plain = ReferenceModel::load(plain_dir), obf = ReferenceModel::load(obf_dir);
  const ModelConfig& c = plain.config();
  const auto tau = derive_tau(seed, plain.vocab_size());
  std::vector<std::vector<int64_t>> owner;  // layer -> slot -> plaintext expert
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    owner.push_back(invert_permutation(obf::draw_moe_keys(seed, l, c.num_experts, c.moe_intermediate_size, 2.0).expert_slot));
  using Routes = std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>>;  // (layer, position) -> experts
  Routes rp, ro;
  auto hook = [](ReferenceModel& m, Routes& out, const std::vector<std::vector<int64_t>>* relabel) {
    m.set_router_hook([&m, &out, relabel](int64_t l, int64_t t, const std::vector<std::pair<int64_t, double>>& r) {
      std::vector<int64_t> s;
      for (const auto& [e, w] : r) s.push_back(relabel ? (*relabel)[size_t(l)][size_t(e)] : e);
      std::sort(s.begin(), s.end());
      out[{l, m.position() + t}] = s;
    });
  };
  hook(plain, rp, nullptr);
  hook(obf, ro, &owner);
  *logit_err = logit_error(plain, obf, ids, tau);
  EXPECT_EQ(rp.size(), ro.size());
  int64_t same = 0;
  for (const auto& [k, s] : rp) same += ro.count(k) && ro.at(k) == s;
  return double(same) / double(rp.size());
}
}  // namespace

// --router-norm (the report's per-expert router normalisation) is an option, in no profile: it
// divides expert e's logit by its router row's norm. Measured against the exact transform, whose
// routing agrees everywhere.
TEST(Qwen3MoeObfuscate, RouterNormIsAnOptionThatMovesRouting) {
  for (const std::string& name : ObfuscationParams::profile_names())
    EXPECT_FALSE(ObfuscationParams::profile(name).router_norm) << name;
  {  // a dense model has no router: the flag is refused, not ignored
    const std::string dense = aloepri::testing::scratch_dir("qwen3moe_rnorm_dense") + "/model";
    SynthOptions so;
    so.family = Family::Qwen3;
    so.vocab_dir = aloepri::testing::vocab_dir("llama2");
    so.seed = 1;
    synthesize(so, dense);
    ObfuscateOptions opt;
    opt.params = ObfuscationParams::exact();
    opt.params.router_norm = true;
    try {
      obfuscate_model(dense, key_seed(), fs::path(dense).parent_path().string() + "/obf", opt);
      ADD_FAILURE() << "--router-norm accepted for a dense model";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--router-norm"), std::string::npos) << e.what();
    }
  }
  const std::string plain_dir = synth_moe("rnorm_plain", true, 2, 5);
  const Seed seed = key_seed();
  const auto ids = prompt(ReferenceModel::load(plain_dir).vocab_size(), 64, "rnorm");
  for (bool norm : {false, true}) {
    ObfuscateOptions opt;
    opt.params = ObfuscationParams::exact();
    opt.params.router_norm = norm;
    EXPECT_EQ(opt.params.is_exact_setting(), !norm);
    const std::string out = aloepri::testing::scratch_dir(std::string("qwen3moe_rnorm_") + (norm ? "on" : "off")) + "/obf";
    obfuscate_model(plain_dir, seed, out, opt);
    if (norm) {
      HFModel om(out);
      for (int64_t l = 0; l < om.config().num_hidden_layers; ++l) {
        const Tensor r = om.tensor_f32(tensor_names::router(l));
        for (int64_t e = 0; e < r.rows(); ++e) {
          double ss = 0;
          for (int64_t k = 0; k < r.cols(); ++k) ss += double(r.ptr()[e * r.cols() + k]) * r.ptr()[e * r.cols() + k];
          EXPECT_NEAR(std::sqrt(ss), 1.0, 1e-5) << "layer " << l << " expert slot " << e;
        }
      }
    }
    double err = 0;
    const double agree = routing_agreement(plain_dir, out, seed, ids, &err);
    std::printf("qwen3moe router_norm=%d: routing agreement %.4f over 2 layers x 64 positions, rel. logit error %.3e\n",
                int(norm), agree, err);
    if (!norm) {
      EXPECT_EQ(agree, 1.0);
      EXPECT_LT(err, 1e-5);
    } else {
      EXPECT_LT(agree, 1.0);
      EXPECT_GT(err, 1e-3);
    }
  }
}

// A MoE model with a dense layer (mlp_only_layers: [1]): the reference forward and the exact
// obfuscation take the dense path there and the sparse one elsewhere (the GGUF export refuses it:
// llama.cpp's qwen3moe has only sparse layers).
TEST(Qwen3MoeObfuscate, MixedDenseAndSparseLayersStayExact) {
  const std::string dir = aloepri::testing::scratch_dir("qwen3moe_mixed");
  const ModelConfig c = ModelConfig::from_json(moe_config_json());
  write_synthetic_model(dir + "/plain", c, 17);
  HFModel m(dir + "/plain");
  EXPECT_TRUE(m.weights().has(tensor_names::layer(1, "mlp.gate_proj.weight")));
  EXPECT_FALSE(m.weights().has(tensor_names::router(1)));
  EXPECT_TRUE(m.weights().has(tensor_names::router(2)));
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::exact();
  obfuscate_model(dir + "/plain", key_seed(), dir + "/obf", opt);
  ReferenceModel plain = ReferenceModel::load(dir + "/plain"), obf = ReferenceModel::load(dir + "/obf");
  const double err = logit_error(plain, obf, prompt(c.vocab_size, 10, "mixed"), derive_tau(key_seed(), c.vocab_size));
  std::printf("qwen3moe with a dense layer, exact: rel. logit error %.2e\n", err);
  EXPECT_LT(err, 1e-5);
  GGUFExportOptions go;
  go.progress = false;
  go.opaque_vocab = true;
  try {
    export_gguf(HFModel(dir + "/obf"), dir + "/x.gguf", DType::F32, go);
    ADD_FAILURE() << "exported a qwen3moe model with a dense layer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mlp_only_layers"), std::string::npos) << e.what();
  }
}
