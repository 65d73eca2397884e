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

// Every tensor a model of this config must have, with its shape (HF layout).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c);

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
