// Synthetic checkpoints: deterministic per seed, config as requested, vocabulary and special
// tokens from the real tokenizer files, weights at the documented scales, and the result loads
// back through HFModel + ReferenceModel with finite, spread-out logits. Also the `synth` and
// `forward` commands end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"

using namespace aloepri;
namespace at = aloepri::testing;
namespace fs = std::filesystem;

namespace {

SynthOptions opts(Family f, uint64_t seed, const std::string& vocab = "llama2") {
  SynthOptions o;
  o.family = f;
  o.seed = seed;
  o.vocab_dir = at::vocab_dir(vocab);
  return o;
}

std::pair<double, double> mean_std(const std::vector<float>& v) {
  double s = 0, ss = 0;
  for (float x : v) s += x, ss += double(x) * x;
  const double m = s / v.size();
  return {m, std::sqrt(std::max(0.0, ss / v.size() - m * m))};
}

// Mean over positions of the per-position standard deviation of the logits.
double logit_spread(const std::vector<double>& lg, int64_t n) {
  const int64_t T = int64_t(lg.size()) / n;
  double acc = 0;
  for (int64_t t = 0; t < T; ++t) {
    double s = 0, ss = 0;
    for (int64_t v = 0; v < n; ++v) s += lg[t * n + v], ss += lg[t * n + v] * lg[t * n + v];
    const double m = s / n;
    acc += std::sqrt(ss / n - m * m);
  }
  return acc / T;
}

const std::vector<int64_t> kIds = {1, 450, 4996, 17354, 1701, 432, 29871, 13, 2};

}  // namespace

TEST(Synth, SameSeedSameBytesOtherSeedDifferent) {
  std::string dir = at::scratch_dir("synth_det");
  synthesize(opts(Family::Llama, 7), dir + "/a");
  synthesize(opts(Family::Llama, 7), dir + "/b");
  synthesize(opts(Family::Llama, 8), dir + "/c");
  const std::string a = read_file(dir + "/a/model.safetensors");
  EXPECT_EQ(a, read_file(dir + "/b/model.safetensors"));
  EXPECT_EQ(read_file(dir + "/a/config.json"), read_file(dir + "/b/config.json"));
  const std::string c = read_file(dir + "/c/model.safetensors");
  ASSERT_EQ(a.size(), c.size());
  EXPECT_NE(a, c);
  EXPECT_EQ(HFModel(dir + "/a").fingerprint(), HFModel(dir + "/b").fingerprint());
  EXPECT_NE(HFModel(dir + "/a").fingerprint(), HFModel(dir + "/c").fingerprint());
}

TEST(Synth, TinyLlamaPresetConfigAndTokenizer) {
  std::string dir = at::scratch_dir("synth_llama") + "/m";
  synthesize(opts(Family::Llama, 1), dir);
  HFModel m(dir);
  const ModelConfig& c = m.config();
  EXPECT_EQ(c.family, Family::Llama);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);  // GQA
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.vocab_size, 32000);  // llama2: ids 0..31999
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, std::optional<int64_t>(1));  // "<s>"
  EXPECT_EQ(c.eos_token_id, std::optional<int64_t>(2));  // "</s>"
  EXPECT_TRUE(m.weights().has("lm_head.weight"));
  EXPECT_EQ(m.weights().get("model.embed_tokens.weight").dtype, DType::F32);
  // Tokenizer files are byte-for-byte copies.
  EXPECT_EQ(read_file(dir + "/tokenizer.json"), read_file(at::vocab_dir("llama2") + "/tokenizer.json"));
  EXPECT_EQ(read_file(dir + "/tokenizer_config.json"),
            read_file(at::vocab_dir("llama2") + "/tokenizer_config.json"));
  EXPECT_FALSE(fs::exists(dir + ".tmp-" + std::to_string(::getpid())));
}

TEST(Synth, OverridesAreHonoured) {
  SynthOptions o = opts(Family::Mistral, 3);
  o.hidden = 48;
  o.layers = 3;
  o.heads = 6;
  o.kv_heads = 3;
  o.ffn = 80;
  o.tie = true;
  o.rope_scaling = "llama3";
  o.rope_factor = 4.0;
  o.rope_theta = 500000.0;
  const ModelConfig c = synth_config(o);
  EXPECT_EQ(c.family, Family::Mistral);
  EXPECT_EQ(c.hidden_size, 48);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 6);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 8);  // hidden / heads when not given
  EXPECT_EQ(c.intermediate_size, 80);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  // Round trip through config.json keeps all of it.
  std::string dir = at::scratch_dir("synth_over") + "/m";
  synthesize(o, dir);
  HFModel m(dir);
  EXPECT_EQ(m.config().num_hidden_layers, 3);
  EXPECT_EQ(m.config().rope_scaling.type, "llama3");
  EXPECT_FALSE(m.weights().has("lm_head.weight"));
  auto cj = nlohmann::json::parse(read_file(dir + "/config.json"));
  ASSERT_TRUE(cj.contains("sliding_window"));
  EXPECT_TRUE(cj["sliding_window"].is_null());  // full attention, not HF's 4096 default
  ReferenceModel r = ReferenceModel::load(dir);
  auto lg = r.forward(kIds);
  for (double x : lg) ASSERT_TRUE(std::isfinite(x));
}

TEST(Synth, Qwen2TiedWithBiasesAndQwenVocabulary) {
  std::string dir = at::scratch_dir("synth_qwen2") + "/m";
  synthesize(opts(Family::Qwen2, 5, "qwen3"), dir);
  HFModel m(dir);
  const ModelConfig& c = m.config();
  EXPECT_EQ(c.family, Family::Qwen2);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.vocab_size, 151669);  // 151643 BPE tokens + added tokens up to id 151668
  EXPECT_FALSE(c.bos_token_id.has_value());  // bos_token: null
  EXPECT_EQ(c.eos_token_id, std::optional<int64_t>(151645));  // <|im_end|>
  EXPECT_FALSE(m.weights().has("lm_head.weight"));
  auto b = m.tensor_f32("model.layers.0.self_attn.k_proj.bias");
  auto [bm, bs] = mean_std(b.data);
  EXPECT_GT(bs, 0.05);  // small but non-zero
  EXPECT_LT(bs, 0.2);
}

TEST(Synth, WeightScales) {
  std::string dir = at::scratch_dir("synth_scales") + "/m";
  SynthOptions o = opts(Family::Llama, 9);
  o.preset = "small";
  synthesize(o, dir);
  HFModel m(dir);
  EXPECT_EQ(m.config().hidden_size, 256);
  EXPECT_EQ(m.config().intermediate_size, 688);
  auto [nm, ns] = mean_std(m.tensor_f32("model.layers.1.input_layernorm.weight").data);
  EXPECT_NEAR(nm, 1.0, 0.03);
  EXPECT_NEAR(ns, 0.1, 0.02);
  // Projections: std 1/sqrt(fan_in).
  auto [dm, ds] = mean_std(m.tensor_f32("model.layers.0.mlp.down_proj.weight").data);
  EXPECT_NEAR(dm, 0.0, 0.002);
  EXPECT_NEAR(ds, 1.0 / std::sqrt(688.0), 0.002);
  auto [qm, qs] = mean_std(m.tensor_f32("model.layers.3.self_attn.q_proj.weight").data);
  EXPECT_NEAR(qs, 1.0 / 16.0, 0.002);
  // Different tensors are different draws.
  EXPECT_NE(m.tensor_f32("model.layers.0.mlp.gate_proj.weight").data,
            m.tensor_f32("model.layers.0.mlp.up_proj.weight").data);
}

TEST(Synth, LoadsIntoReferenceWithSensibleLogits) {
  for (Family f : {Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3}) {
    SCOPED_TRACE(family_name(f));
    std::string dir = at::scratch_dir("synth_ref_" + family_name(f)) + "/m";
    synthesize(opts(f, 11), dir);
    ReferenceModel r = ReferenceModel::load(dir);
    const int64_t n = r.vocab_size();
    auto lg = r.forward(kIds);
    ASSERT_EQ(lg.size(), kIds.size() * size_t(n));
    for (double x : lg) ASSERT_TRUE(std::isfinite(x));
    const double spread = logit_spread(lg, n);
    EXPECT_GT(spread, 0.1);
    EXPECT_LT(spread, 20.0);
    // Different contexts lead to different next-token distributions.
    double diff = 0;
    for (int64_t v = 0; v < n; ++v) diff = std::max(diff, std::abs(lg[v] - lg[(kIds.size() - 1) * n + v]));
    EXPECT_GT(diff, 0.1);
  }
}

TEST(Synth, Bf16IsTheRoundedF32Model) {
  std::string dir = at::scratch_dir("synth_bf16");
  SynthOptions o = opts(Family::Llama, 21);
  synthesize(o, dir + "/f32");
  o.dtype = DType::BF16;
  synthesize(o, dir + "/bf16");
  HFModel a(dir + "/f32"), b(dir + "/bf16");
  EXPECT_EQ(b.config().torch_dtype, "bfloat16");
  const auto& v = b.weights().get("model.layers.0.self_attn.o_proj.weight");
  EXPECT_EQ(v.dtype, DType::BF16);
  // Every bf16 value is the RNE rounding of the f32 value drawn from the same stream.
  Tensor fa = a.tensor_f32("model.layers.0.self_attn.o_proj.weight");
  Tensor fb = b.tensor_f32("model.layers.0.self_attn.o_proj.weight");
  ASSERT_EQ(fa.data.size(), fb.data.size());
  for (size_t i = 0; i < fa.data.size(); ++i) ASSERT_EQ(fb.data[i], bf16_to_f32(f32_to_bf16(fa.data[i])));
  // So the two models' logits are close but not identical.
  ReferenceModel ra(ModelWeights::load(a)), rb(ModelWeights::load(b));
  auto la = ra.prefill(kIds), lb = rb.prefill(kIds);
  double diff = 0;
  for (size_t i = 0; i < la.size(); ++i) diff = std::max(diff, std::abs(la[i] - lb[i]));
  EXPECT_GT(diff, 0.0);
  EXPECT_LT(diff, 0.2);
}

TEST(Synth, RefusesExistingDirectoryUnlessOverwrite) {
  std::string dir = at::scratch_dir("synth_exists") + "/m";
  synthesize(opts(Family::Llama, 1), dir);
  try {
    synthesize(opts(Family::Llama, 2), dir);
    FAIL() << "overwrote an existing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
  }
  const std::string before = read_file(dir + "/model.safetensors");
  synthesize(opts(Family::Llama, 2), dir, /*overwrite=*/true);
  EXPECT_NE(before, read_file(dir + "/model.safetensors"));
}

TEST(Synth, ShardedOutputLoads) {
  std::string dir = at::scratch_dir("synth_shard") + "/m";
  SynthOptions o = opts(Family::Llama, 4);
  o.max_shard_bytes = 4u << 20;  // the 32000 x 64 f32 embedding alone is 8 MiB
  synthesize(o, dir);
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  ReferenceModel r = ReferenceModel::load(dir);
  // Same seed without sharding: same model, same logits.
  std::string dir2 = at::scratch_dir("synth_noshard") + "/m";
  o.max_shard_bytes = 0;
  synthesize(o, dir2);
  ReferenceModel r2 = ReferenceModel::load(dir2);
  EXPECT_EQ(r.prefill(kIds), r2.prefill(kIds));
}

TEST(Synth, ModelWeightsLoadKeepsTheHFLayout) {
  std::string dir = at::scratch_dir("synth_load") + "/m";
  SynthOptions o = opts(Family::Qwen3, 6);
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 24;  // q_proj is (96 x 64): a wrong orientation cannot hide behind a square shape
  synthesize(o, dir);
  HFModel m(dir);
  ModelWeights w = ModelWeights::load(m);
  const ModelConfig& c = w.config;
  ASSERT_EQ(w.layers.size(), 2u);
  struct Pair {
    const Tensor& ours;
    std::string hf;
  };
  const LayerWeights& L = w.layers[1];
  for (const Pair& p : {Pair{L.wq, "self_attn.q_proj.weight"}, Pair{L.wk, "self_attn.k_proj.weight"},
                        Pair{L.wv, "self_attn.v_proj.weight"}, Pair{L.wo, "self_attn.o_proj.weight"},
                        Pair{L.w_gate, "mlp.gate_proj.weight"}, Pair{L.w_up, "mlp.up_proj.weight"},
                        Pair{L.w_down, "mlp.down_proj.weight"}}) {
    SCOPED_TRACE(p.hf);
    Tensor hf = m.tensor_f32(tensor_names::layer(1, p.hf));
    ASSERT_EQ(p.ours.shape, hf.shape);
    EXPECT_EQ(p.ours.data, hf.data);
  }
  EXPECT_EQ(L.q_norm.data, m.tensor_f32(tensor_names::layer(1, "self_attn.q_norm.weight")).data);
  EXPECT_EQ(L.k_norm.data, m.tensor_f32(tensor_names::layer(1, "self_attn.k_norm.weight")).data);
  EXPECT_EQ(L.attn_norm.data, m.tensor_f32(tensor_names::layer(1, "input_layernorm.weight")).data);
  EXPECT_EQ(L.ffn_norm.data, m.tensor_f32(tensor_names::layer(1, "post_attention_layernorm.weight")).data);
  EXPECT_TRUE(L.bq.data.empty());
  // Tied: the head is the embedding.
  ASSERT_EQ(w.head.rows(), c.vocab_size);
  ASSERT_EQ(w.head.cols(), c.hidden_size);
  EXPECT_EQ(w.head.data, w.embed.data);
}

TEST(Synth, SpecialTokenLookup) {
  nlohmann::json tok = {{"model", {{"vocab", {{"a", 0}, {"b", 1}, {"<go>", 2}}}}},
                        {"added_tokens", {{{"id", 7}, {"content", "<stop>"}}}}};
  EXPECT_EQ(tokenizer_vocab_size(tok, "t"), 8);
  nlohmann::json cfg = {{"bos_token", {{"content", "<go>"}}}, {"eos_token", "<stop>"}, {"pad_token", nullptr},
                        {"unk_token", "<nope>"}};
  EXPECT_EQ(special_token_id(cfg, tok, "bos_token", "c"), std::optional<int64_t>(2));
  EXPECT_EQ(special_token_id(cfg, tok, "eos_token", "c"), std::optional<int64_t>(7));
  EXPECT_EQ(special_token_id(cfg, tok, "pad_token", "c"), std::nullopt);
  EXPECT_EQ(special_token_id(cfg, tok, "absent", "c"), std::nullopt);
  EXPECT_THROW(special_token_id(cfg, tok, "unk_token", "c"), Error);
}

TEST(SynthCli, SynthThenForwardJson) {
  std::string dir = at::scratch_dir("synth_cli");
  const std::string exe = at::aloepri_exe();
  std::string out;
  ASSERT_EQ(at::run_command(exe + " -q synth --arch qwen2 --preset tiny --seed 3 --out " + dir + "/m", &out, true), 0)
      << out;
  out.clear();
  EXPECT_EQ(at::run_command(exe + " -q synth --arch qwen2 --seed 3 --out " + dir + "/m", &out, true), 4) << out;
  out.clear();
  EXPECT_EQ(at::run_command(exe + " synth --arch gpt2 --seed 3 --out " + dir + "/x", &out, true), 2) << out;
  out.clear();
  ASSERT_EQ(at::run_command(exe + " forward " + dir + "/m --ids 1,450,4996 --greedy 4 --all-logits --json", &out), 0)
      << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["engine"], "reference");
  EXPECT_EQ(j["ids"], nlohmann::json({1, 450, 4996}));
  EXPECT_EQ(j["vocab_size"], 32000);
  ASSERT_EQ(j["last_logits"].size(), 32000u);
  ASSERT_EQ(j["logits"].size(), 3u);
  EXPECT_EQ(j["logits"][2], j["last_logits"]);
  // The printed logits round-trip: exactly what the library computes.
  ReferenceModel r = ReferenceModel::load(dir + "/m");
  auto last = r.prefill({1, 450, 4996});
  for (int64_t v = 0; v < 32000; v += 997) EXPECT_EQ(j["last_logits"][v].get<double>(), last[v]);
  EXPECT_EQ(j["greedy"].get<std::vector<int64_t>>(), r.greedy({1, 450, 4996}, 4));
  // Without --all-logits there is no "logits" field; bad ids are usage errors.
  out.clear();
  ASSERT_EQ(at::run_command(exe + " forward " + dir + "/m --ids 5 --json", &out), 0) << out;
  EXPECT_FALSE(nlohmann::json::parse(out).contains("logits"));
  out.clear();
  EXPECT_EQ(at::run_command(exe + " forward " + dir + "/m --ids 5,32000", &out, true), 2) << out;
  out.clear();
  ASSERT_EQ(at::run_command(exe + " forward " + dir + "/m --ids 1,2,3 --greedy 2", &out, true), 0) << out;
  EXPECT_NE(out.find("top-5"), std::string::npos) << out;
}
