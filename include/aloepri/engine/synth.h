// Synthetic checkpoints: a randomly initialised HF model directory (config.json,
// model.safetensors, tokenizer files copied from a real vocabulary) for tests and benchmarks.
// Weights are drawn at realistic scales so activations and logits behave like a trained
// model's in magnitude (not in content): embeddings and heads N(0, 1/sqrt(d)), projections
// N(0, 1/sqrt(fan_in)), norm weights 1 + 0.1 N(0,1), biases N(0, 0.1).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "aloepri/core/dtype.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/core/rng.h"

namespace aloepri {

struct SynthOptions {
  Family family = Family::Llama;
  std::string preset = "tiny";  // "tiny" | "small"
  // Overrides of the preset (unset: preset value).
  std::optional<int64_t> hidden, layers, heads, kv_heads, head_dim, ffn;
  // qwen3moe only (unset: preset value): experts, experts per token, expert FFN width; the router
  // renormalises its top-k weights unless norm_topk_prob is false (default true, as Qwen3-30B-A3B).
  std::optional<int64_t> experts, experts_per_tok, moe_ffn;
  std::optional<bool> norm_topk_prob;
  // deepseek_v2 / deepseek_v3 (preset tiny: q latent 48, kv latent 32, nope 8, rope 8, v 8,
  // 1 shared expert, layer 0 dense; v3 adds sigmoid scores, noaux_tc with 4 groups of which 2 are
  // kept, e_score_correction_bias, routed scale 2.5). q_lora 0: q_proj from the residual (V2-Lite).
  std::optional<int64_t> q_lora;
  std::optional<bool> tie;            // default: tied for qwen2/qwen3, untied for llama/mistral/qwen3moe
  std::optional<double> rope_theta;   // default per family
  std::string rope_scaling;           // "" | "llama3" | "linear" | "yarn" (deepseek)
  // for rope_scaling (llama3 also: low 1, high 4, original 8192; yarn: DeepSeek's release
  // settings, original 4096, mscale = mscale_all_dim 0.707 on V2 / 1 on V3)
  double rope_factor = 8.0;
  int64_t max_position_embeddings = 4096;
  std::string vocab_dir;              // holds tokenizer.json + tokenizer_config.json (required)
  DType dtype = DType::F32;           // F32 | BF16 | F16
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 0;       // 0: one model.safetensors
};

// The config a synth run writes (reads the tokenizer files for vocab_size and bos/eos).
ModelConfig synth_config(const SynthOptions& o);

// Writes the checkpoint into out_dir atomically (built in a temporary sibling, then renamed);
// refuses an existing out_dir unless overwrite. Tensors are generated and written one at a
// time, so peak memory is one tensor.
void synthesize(const SynthOptions& o, const std::string& out_dir, bool overwrite = false);

// The 256-bit seed of a synth run: SHA-256("aloepri synth seed " + decimal(seed)).
Seed synth_seed(uint64_t seed);

// Full vocabulary size of a tokenizer.json: 1 + the largest id in model.vocab and added_tokens.
int64_t tokenizer_vocab_size(const nlohmann::json& tokenizer_json, const std::string& where);

// Id of a special token named in tokenizer_config.json (`key` is "bos_token" / "eos_token"; the
// value may be a string, {"content": ...} or null), looked up in tokenizer.json's added_tokens,
// then model.vocab. nullopt when the key is absent or null.
std::optional<int64_t> special_token_id(const nlohmann::json& tokenizer_config,
                                        const nlohmann::json& tokenizer_json, const std::string& key,
                                        const std::string& where);

}  // namespace aloepri
