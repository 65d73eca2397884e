// Hugging Face config.json for the decoder families we support: dense (llama, mistral, qwen2,
// qwen3), Qwen3-MoE (softmax router, top-k experts, SwiGLU experts) and DeepSeek-V2/V3
// (multi-head latent attention; routed + shared experts, group-limited routing, dense first layers).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace aloepri {

enum class Family { Llama, Mistral, Qwen2, Qwen3, Qwen3Moe, DeepseekV2, DeepseekV3 };
std::string family_name(Family f);  // "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3"
std::vector<std::string> supported_families();

struct RopeScaling {
  std::string type;  // "" (none), "llama3", "linear", "yarn" (DeepSeek only)
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;  // llama3, yarn
  // yarn: the correction range's rotation counts, and DeepSeek's two magnitude scales (cos/sin by
  // mscale(factor, mscale) / mscale(factor, mscale_all_dim); MLA's softmax by
  // mscale(factor, mscale_all_dim)^2, where mscale(s, m) = 1 + 0.1 m ln s for s > 1).
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0, mscale_all_dim = 0.0;
};

struct ModelConfig {
  Family family = Family::Llama;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;            // explicit, or hidden_size / num_attention_heads
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;     // q/k/v biases (qwen2 always; llama if attention_bias)
  bool qk_norm = false;            // qwen3 / qwen3_moe q_norm / k_norm
  // Mixture of experts (qwen3_moe; 0 / empty for the dense families). A layer l is sparse when
  // num_experts > 0, l is not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0
  // (transformers' Qwen3MoeDecoderLayer); the others are dense MLPs of intermediate_size.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = false;     // renormalise the top-k router probabilities to sum 1
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  // DeepSeek-V2/V3 multi-head latent attention (mla() only). Queries: x -> q_a_proj [q_lora_rank]
  // -> RMSNorm -> q_b_proj [heads * (nope + rope)] (q_proj straight from x when q_lora_rank is 0);
  // keys/values: x -> kv_a_proj_with_mqa [kv_lora_rank + rope]: the latent (RMSNorm, then
  // kv_b_proj [heads * (nope + v)]) and one rope key shared by every head. head_dim holds
  // nope + rope (the query/key width per head).
  int64_t q_lora_rank = 0, kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // DeepSeek MoE: a layer is sparse when l >= first_k_dense_replace and l % moe_layer_freq == 0;
  // n_shared_experts always-on experts of moe_intermediate_size each (one MLP of n * that width);
  // scoring_func "softmax" | "sigmoid"; topk_method "greedy" | "group_limited_greedy" (group score:
  // its best expert) | "noaux_tc" (scores + e_score_correction_bias choose, group score: the sum of
  // its two best); n_group groups of which topk_group are kept; the chosen weights (renormalised
  // when norm_topk_prob) times routed_scaling_factor.
  int64_t n_shared_experts = 0, first_k_dense_replace = 0, moe_layer_freq = 1, n_group = 1, topk_group = 1;
  double routed_scaling_factor = 1.0;
  std::string scoring_func = "softmax", topk_method = "greedy";
  std::optional<int64_t> bos_token_id, eos_token_id;
  std::string torch_dtype = "float32";
  nlohmann::json raw;              // the file as read (unknown fields are kept on write)

  // Parse; `where` names the file in errors. Throws Error naming the missing/bad field, or
  // listing the supported architectures for an unknown one.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& where = "config.json");
  static ModelConfig load(const std::string& path_or_dir);
  nlohmann::json to_json() const;  // a complete HF config.json
  void validate(const std::string& where = "config.json") const;

  // HF gives o_proj a bias too when attention_bias is set on llama/qwen3 (never on qwen2).
  bool o_bias() const { return attention_bias && family != Family::Qwen2; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t group_size() const { return num_attention_heads / num_key_value_heads; }
  bool is_moe() const { return num_experts > 0; }
  bool mla() const { return family == Family::DeepseekV2 || family == Family::DeepseekV3; }
  int64_t v_dim() const { return num_attention_heads * (mla() ? v_head_dim : head_dim); }  // attention output width
  int64_t rope_dim() const { return mla() ? qk_rope_head_dim : head_dim; }                 // rotated dims per head
  bool router_bias() const { return mla() && topk_method == "noaux_tc"; }  // e_score_correction_bias
  bool is_moe_layer(int64_t layer) const;
  int64_t parameter_count() const;  // from shapes (embedding + head counted per tying)
};

// RoPE inverse frequencies [rope_dim() / 2] of a config, in double (HF rotate_half layout):
// theta^(-2i/d_h), then the config's rope_scaling ("" / "default": none; "linear": / factor;
// "llama3": HF's _compute_llama3_parameters smooth interpolation; "yarn": its
// _compute_yarn_parameters ramp between kept and interpolated dims). The one implementation, for
// the reference forward, the obfuscator's BlockPerm and the libtorch tools. Throws Error naming
// the config field for an odd head_dim, a non-positive factor or another rope type.
std::vector<double> rope_inv_freq(const ModelConfig& c);
// The factor on RoPE's cos and sin (1 unless yarn), and on the attention scores' 1/sqrt(d_k) (1
// unless yarn with mscale_all_dim on a latent-attention model), as transformers applies them.
double rope_magnitude(const ModelConfig& c);
double attention_score_factor(const ModelConfig& c);
// Unscaled: theta^(-2i/d_h) for i < head_dim / 2.
std::vector<double> rope_inv_freq(double theta, int64_t head_dim);

}  // namespace aloepri
