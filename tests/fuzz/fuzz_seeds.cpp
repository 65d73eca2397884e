// Writes seed corpora for the fuzz targets: `fuzz_seeds DIR` creates DIR/<target>/<seed>.
// Seeds are made by the project's own writers so they are valid inputs the fuzzer mutates from.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aloepri/formats/hf_config.h"
#include "aloepri/formats/safetensors.h"

namespace fs = std::filesystem;
using namespace aloepri;

static void safetensors_seed(const fs::path& out, const std::string& name,
                             const std::vector<TensorSpec>& specs) {
  fs::path tmp = out / (name + ".dir");
  fs::remove_all(tmp);
  {
    SafetensorsWriter w(tmp.string());
    for (auto& s : specs) w.add(s);
    for (auto& s : specs) {
      std::vector<float> v(size_t(s.nbytes() / dtype_size(s.dtype)));
      for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f - 1.0f;
      w.write_f32(s.name, v.data(), v.size());
    }
    w.finish();
  }
  fs::rename(tmp / "model.safetensors", out / (name + ".safetensors"));
  fs::remove_all(tmp);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  fs::path root = argv[1];
  fs::path st = root / "safetensors_fuzz";
  fs::create_directories(st);
  safetensors_seed(st, "one_f32", {{"w", DType::F32, {2, 3}}});
  safetensors_seed(st, "mixed", {{"model.embed_tokens.weight", DType::BF16, {4, 2}},
                                 {"b", DType::F16, {3}},
                                 {"scalar", DType::F32, {}},
                                 {"empty", DType::F16, {0, 5}},
                                 {"d", DType::F64, {2}}});
  safetensors_seed(st, "none", {});

  fs::path hc = root / "hf_config_fuzz";
  fs::create_directories(hc);
  auto cfg = [&](const std::string& name, nlohmann::json j) {
    std::ofstream(hc / (name + ".json")) << ModelConfig::from_json(j).to_json().dump(1);
  };
  nlohmann::json base = {{"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                         {"num_key_value_heads", 2}, {"intermediate_size", 96}, {"vocab_size", 100},
                         {"bos_token_id", 1}, {"eos_token_id", {2, 3}}};
  auto with = [&](nlohmann::json extra) {
    nlohmann::json j = base;
    j.update(extra);
    return j;
  };
  cfg("llama3", with({{"model_type", "llama"},
                      {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}}));
  cfg("mistral", with({{"model_type", "mistral"}, {"sliding_window", 4096}}));
  cfg("qwen2", with({{"model_type", "qwen2"}, {"tie_word_embeddings", true}}));
  cfg("qwen3", with({{"model_type", "qwen3"}, {"head_dim", 32}, {"rope_scaling", nullptr}}));
  cfg("qwen3_moe", with({{"model_type", "qwen3_moe"}, {"num_experts", 8}, {"num_experts_per_tok", 2},
                         {"moe_intermediate_size", 32}, {"mlp_only_layers", {1}}}));
  nlohmann::json ds = with({{"model_type", "deepseek_v3"}, {"num_key_value_heads", 4}, {"q_lora_rank", 48},
                            {"kv_lora_rank", 32}, {"qk_nope_head_dim", 8}, {"qk_rope_head_dim", 8},
                            {"v_head_dim", 8}, {"n_routed_experts", 8}, {"num_experts_per_tok", 2},
                            {"n_shared_experts", 1}, {"first_k_dense_replace", 1}, {"n_group", 4},
                            {"topk_group", 2}});
  cfg("deepseek_v3", ds);
  ds["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                        {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  cfg("deepseek_v3_yarn", ds);
  ds.erase("rope_scaling");
  ds["model_type"] = "deepseek_v2";
  ds["q_lora_rank"] = nullptr;
  ds["topk_method"] = "group_limited_greedy";
  cfg("deepseek_v2", ds);
  std::printf("seed corpora written under %s\n", root.c_str());
  return 0;
}
