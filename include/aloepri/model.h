// An HF checkpoint directory: config.json + safetensors (+ tokenizer files), and the tensor
// names of the dense decoder families. Weights are HF layout: nn.Linear weight is (out x in).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "aloepri/hf_config.h"
#include "aloepri/safetensors.h"

namespace aloepri {

namespace tensor_names {
std::string embed();        // model.embed_tokens.weight
std::string final_norm();   // model.norm.weight
std::string lm_head();      // lm_head.weight (absent when tied)
std::string layer(int64_t i, const std::string& suffix);  // model.layers.{i}.{suffix}
// suffixes: input_layernorm.weight, self_attn.{q,k,v,o}_proj.weight, self_attn.{q,k,v}_proj.bias,
// self_attn.{q,k}_norm.weight, post_attention_layernorm.weight, mlp.{gate,up,down}_proj.weight
}  // namespace tensor_names

// self_attn.o_proj.bias exists when config.o_bias().
// Every tensor a model of this config must have, with its shape (HF layout).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c);

// A small random checkpoint of this config for tests and benchmarks: config.json +
// safetensors in `dtype` (sharded past max_shard_bytes), written atomically into the new
// directory `dir`. Weights come from RngStream(seed as the first 8 little-endian seed bytes,
// "synthetic/<tensor name>"): linear weights N(0, 1/fan_in), embedding N(0, 1), norm weights
// 1 + N(0, 0.1^2), biases N(0, 0.1^2), so forward passes of a few layers stay well
// conditioned. Fails (kExitOutputExists) if `dir` exists.
void write_synthetic_model(const std::string& dir, const ModelConfig& config, uint64_t seed,
                           DType dtype = DType::F32, uint64_t max_shard_bytes = 0);

class HFModel {
 public:
  explicit HFModel(const std::string& dir);  // checks every expected tensor exists with its shape
  const ModelConfig& config() const { return config_; }
  const SafetensorsReader& weights() const { return *weights_; }
  const std::string& dir() const { return dir_; }
  Tensor tensor_f32(const std::string& name) const { return weights_->get(name).to_f32(); }
  // The output head in HF layout (vocab x hidden): lm_head.weight, or the embedding when tied.
  Tensor lm_head_f32() const;
  std::string tokenizer_json_path() const;  // "" if absent
  // SHA-256 over config fields and every tensor's name, dtype, shape and bytes (hex).
  std::string fingerprint() const;

 private:
  std::string dir_;
  ModelConfig config_;
  std::unique_ptr<SafetensorsReader> weights_;
};

}  // namespace aloepri
