// HFModel: loading synthetic checkpoints of every family, the shape checks, the output head,
// the fingerprint (stable under re-saving, sensitive to any weight or config change), and
// `aloepri inspect` on a good model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;
using aloepri::testing::scratch_dir;
using nlohmann::json;

namespace {

ModelConfig tiny(Family f, bool tied = false) {
  json j = {{"model_type", family_name(f)}, {"hidden_size", 16}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 24},
            {"vocab_size", 40}, {"tie_word_embeddings", tied}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  if (f == Family::Qwen3) j["head_dim"] = 8;  // != 16 / 4, as in real Qwen3 checkpoints
  return ModelConfig::from_json(j);
}

void rewrite_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = json::parse(std::ifstream(dir + "/config.json"));
  edit(j);
  fs::remove(dir + "/config.json");
  std::ofstream(dir + "/config.json") << j.dump(2);
}

std::string load_error(const std::string& dir) {
  try {
    HFModel m(dir);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitBadInput);
    return e.what();
  }
  return "";
}

}  // namespace

TEST(HFModel, LoadsEveryFamilyWithExpectedShapes) {
  for (Family f : {Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3}) {
    for (bool tied : {false, true}) {
      std::string dir = scratch_dir("model_" + family_name(f) + (tied ? "_tied" : "")) + "/m";
      write_synthetic_model(dir, tiny(f, tied), 7, DType::BF16);
      HFModel m(dir);
      EXPECT_EQ(m.config().family, f);
      EXPECT_EQ(m.config().tie_word_embeddings, tied);
      EXPECT_EQ(m.config().torch_dtype, "bfloat16");
      EXPECT_EQ(m.weights().names().size(), expected_tensors(m.config()).size());
      for (auto& [name, shape] : expected_tensors(m.config())) {
        EXPECT_EQ(m.weights().get(name).shape, shape) << name;
        EXPECT_EQ(m.weights().get(name).dtype, DType::BF16) << name;
      }
      Tensor head = m.lm_head_f32();
      EXPECT_EQ(head.shape, (std::vector<int64_t>{40, 16}));
      Tensor embed = m.tensor_f32(tensor_names::embed());
      if (tied)
        EXPECT_EQ(head.data, embed.data);
      else
        EXPECT_NE(head.data, embed.data);
      EXPECT_EQ(m.config().qk_norm, f == Family::Qwen3);
      EXPECT_EQ(m.weights().has(tensor_names::layer(1, "self_attn.q_proj.bias")), f == Family::Qwen2);
      EXPECT_EQ(m.tokenizer_json_path(), "");
    }
  }
}

TEST(HFModel, ShardedCheckpointLoadsTheSame) {
  std::string base = scratch_dir("model_sharded");
  write_synthetic_model(base + "/single", tiny(Family::Qwen2), 3);
  write_synthetic_model(base + "/sharded", tiny(Family::Qwen2), 3, DType::F32, 4096);
  HFModel a(base + "/single"), b(base + "/sharded");
  EXPECT_EQ(a.weights().files().size(), 1u);
  EXPECT_GT(b.weights().files().size(), 2u);
  for (auto& n : a.weights().names())
    EXPECT_EQ(a.tensor_f32(n).data, b.tensor_f32(n).data) << n;
  // The fingerprint describes the model, not the file layout.
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
}

TEST(HFModel, SyntheticWeightsAreDeterministicPerSeedAndScaled) {
  std::string base = scratch_dir("model_seed");
  write_synthetic_model(base + "/a", tiny(Family::Llama), 11);
  write_synthetic_model(base + "/b", tiny(Family::Llama), 11);
  write_synthetic_model(base + "/c", tiny(Family::Llama), 12);
  HFModel a(base + "/a"), b(base + "/b"), c(base + "/c");
  std::string w = tensor_names::layer(0, "mlp.down_proj.weight");
  EXPECT_EQ(a.tensor_f32(w).data, b.tensor_f32(w).data);
  EXPECT_NE(a.tensor_f32(w).data, c.tensor_f32(w).data);
  // Norm weights sit near 1, projection weights near N(0, 1/fan_in).
  Tensor norm = a.tensor_f32(tensor_names::final_norm());
  double mean = 0;
  for (float x : norm.data) mean += x / norm.data.size();
  EXPECT_NEAR(mean, 1.0, 0.1);
  Tensor down = a.tensor_f32(w);
  double var = 0;
  for (float x : down.data) var += double(x) * x / down.data.size();
  EXPECT_NEAR(var, 1.0 / 24, 0.5 / 24);
  EXPECT_THROW(write_synthetic_model(base + "/a", tiny(Family::Llama), 11), Error);  // exists
}

TEST(HFModel, ShapeAndPresenceErrorsNameTheTensor) {
  std::string base = scratch_dir("model_errors");
  std::string dir = base + "/m";
  write_synthetic_model(dir, tiny(Family::Mistral), 5);
  rewrite_config(dir, [](json& j) { j["num_key_value_heads"] = 4; });
  std::string e = load_error(dir);
  EXPECT_NE(e.find(dir + "/model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 16], "
                         "expected [16, 16] from config.json"),
            std::string::npos)
      << e;

  // Untied config over a tied checkpoint: lm_head is missing.
  std::string dir2 = base + "/tied";
  write_synthetic_model(dir2, tiny(Family::Qwen2, true), 5);
  rewrite_config(dir2, [](json& j) { j["tie_word_embeddings"] = false; });
  e = load_error(dir2);
  EXPECT_NE(e.find("missing tensor 'lm_head.weight' (expected shape [40, 16]"), std::string::npos) << e;

  // A model that is not a directory, and a directory without config.json.
  EXPECT_NE(load_error(dir + "/model.safetensors").find("not a directory"), std::string::npos);
  std::string dir3 = base + "/noconfig";
  write_synthetic_model(dir3, tiny(Family::Llama), 5);
  fs::remove(dir3 + "/config.json");
  EXPECT_NE(load_error(dir3).find("config.json: not found"), std::string::npos);
}

TEST(HFModel, FingerprintIsStableAndSensitive) {
  std::string base = scratch_dir("model_fp");
  write_synthetic_model(base + "/a", tiny(Family::Qwen3), 9);
  write_synthetic_model(base + "/b", tiny(Family::Qwen3), 9);
  const std::string fa = HFModel(base + "/a").fingerprint();
  EXPECT_EQ(fa.size(), 64u);
  EXPECT_EQ(fa.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(fa, HFModel(base + "/a").fingerprint());
  EXPECT_EQ(fa, HFModel(base + "/b").fingerprint());

  // Fields that do not change the model do not change the fingerprint.
  rewrite_config(base + "/b", [](json& j) { j["transformers_version"] = "9.9.9"; });
  EXPECT_EQ(fa, HFModel(base + "/b").fingerprint());
  // A model-defining field does.
  rewrite_config(base + "/b", [](json& j) { j["rope_theta"] = 20000.0; });
  EXPECT_NE(fa, HFModel(base + "/b").fingerprint());

  // One flipped bit in the last weight byte.
  fs::copy(base + "/a", base + "/c", fs::copy_options::recursive);
  {
    std::fstream f(base + "/c/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-1, std::ios::end);
    char ch = char(f.get());
    f.seekp(-1, std::ios::end);
    f.put(char(ch ^ 1));
  }
  EXPECT_NE(fa, HFModel(base + "/c").fingerprint());

  // Same values, another dtype: a different model file, a different fingerprint.
  write_synthetic_model(base + "/d", tiny(Family::Qwen3), 9, DType::BF16);
  EXPECT_NE(fa, HFModel(base + "/d").fingerprint());
  write_synthetic_model(base + "/e", tiny(Family::Qwen3), 10);
  EXPECT_NE(fa, HFModel(base + "/e").fingerprint());
}

TEST(HFModel, TokenizerPathWhenPresent) {
  std::string dir = scratch_dir("model_tok") + "/m";
  write_synthetic_model(dir, tiny(Family::Llama), 1);
  std::ofstream(dir + "/tokenizer.json") << "{}";
  EXPECT_EQ(HFModel(dir).tokenizer_json_path(), dir + "/tokenizer.json");
}

TEST(InspectCli, TableAndJson) {
  std::string dir = scratch_dir("inspect_ok") + "/m";
  write_synthetic_model(dir, tiny(Family::Qwen3, true), 4, DType::BF16, 4096);
  HFModel m(dir);
  std::string out;
  int rc = aloepri::testing::run_command(aloepri::testing::aloepri_exe() + " inspect --json " + dir, &out);
  ASSERT_EQ(rc, 0) << out;
  json j = json::parse(out);
  EXPECT_EQ(j["family"], "qwen3");
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["qk_norm"], true);
  EXPECT_EQ(j["parameters"], m.config().parameter_count());
  EXPECT_EQ(j["tensor_count"], m.weights().names().size());
  EXPECT_EQ(j["dtypes"]["BF16"]["bytes"], m.weights().total_bytes());
  EXPECT_EQ(j["files"].size(), m.weights().files().size());
  EXPECT_EQ(j["fingerprint"], m.fingerprint());
  EXPECT_EQ(j["tensors_shown"][0]["name"], tensor_names::embed());

  out.clear();
  rc = aloepri::testing::run_command(aloepri::testing::aloepri_exe() + " inspect " + dir, &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("qwen3 (Qwen3ForCausalLM)"), std::string::npos) << out;
  EXPECT_NE(out.find("4 query, 2 kv (group 2), head_dim 8"), std::string::npos) << out;
  EXPECT_NE(out.find("sha256:" + m.fingerprint()), std::string::npos) << out;
  EXPECT_NE(out.find("model.norm.weight BF16 [16]"), std::string::npos) << out;
}
