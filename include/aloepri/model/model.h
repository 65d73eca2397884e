// An HF checkpoint directory: config.json + safetensors (+ tokenizer files), and the tensor
// names of the dense decoder families. Weights are HF layout: nn.Linear weight is (out x in).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "aloepri/formats/hf_config.h"
#include "aloepri/core/rng.h"
#include "aloepri/formats/safetensors.h"

namespace aloepri {

// Shorthands for the names of the decoder layout (model/layout.h), which is where every name
// lives: product code asks the layout for a tensor by role; `layer(i, suffix)` spells an HF
// suffix and is kept for tests that check the table against Hugging Face's naming.
namespace tensor_names {
std::string embed();        // model.embed_tokens.weight
std::string final_norm();   // model.norm.weight
std::string lm_head();      // lm_head.weight (absent when tied)
std::string layer(int64_t i, const std::string& suffix);  // model.layers.{i}.{suffix}
// suffixes: input_layernorm.weight, self_attn.{q,k,v,o}_proj.weight, self_attn.{q,k,v}_proj.bias,
// self_attn.{q,k}_norm.weight, post_attention_layernorm.weight, mlp.{gate,up,down}_proj.weight
// Mixture of experts (qwen3_moe sparse layers): the router and expert e's SwiGLU projections.
std::string router(int64_t i);                                   // model.layers.{i}.mlp.gate.weight
enum class ExpertProj { Gate, Up, Down };
std::string expert(int64_t i, int64_t e, ExpertProj p);          // model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight
}  // namespace tensor_names

// self_attn.o_proj.bias exists when config.o_bias().
// Every tensor a model of this config must have, with its shape (HF layout).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c);

// How synthetic weights are drawn (write_synthetic_tensors). Every tensor draws from its own
// RngStream(seed, stream_prefix + name), so its values depend only on the seed, its name and its
// shape, never on the order of generation. Norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2),
// projections and an untied head N(0, 1/fan_in), the embedding N(0, embed_std^2).
struct SyntheticInit {
  Seed seed{};
  std::string stream_prefix;
  double embed_std = 1.0;
};

// The one synthetic-weight writer (write_synthetic_model for the tests, synthesize() for
// `aloepri synth`): every tensor of `config` (expected_tensors) into a safetensors set in `dir`
// (sharded past max_shard_bytes), one tensor in memory at a time; a progress bar named
// progress_label unless it is null.
void write_synthetic_tensors(const std::string& dir, const ModelConfig& config, const SyntheticInit& init, DType dtype,
                             uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata,
                             const char* progress_label = nullptr);

// A small random checkpoint of this config for tests and benchmarks: config.json +
// safetensors in `dtype`, written atomically into the new directory `dir`. Weights: the seed's
// first 8 little-endian bytes, streams "synthetic/<tensor name>", embedding N(0, 1) (synth.h's
// checkpoints use 1/sqrt(d): realistic logits; these tests' expectations were set on N(0, 1)),
// so forward passes of a few layers stay well conditioned. Fails (kExitOutputExists) if `dir`
// exists.
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
