// Synthetic HF checkpoints (see synth.h): the config from a real vocabulary and the tensors from
// the one synthetic-weight writer (model.h write_synthetic_tensors), streams "synth/<name>".
#include "aloepri/engine/synth.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace aloepri {

namespace {

json read_json(const std::string& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path, std::string("invalid JSON: ") + e.what());
  }
}

std::string torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: throw Error("--dtype", "synth writes f32, bf16 or f16, not " + dtype_name(t), kExitUsage);
  }
}

struct Dims {
  int64_t hidden, layers, heads, kv_heads, head_dim, ffn;
};

Dims preset_dims(const std::string& preset) {
  if (preset == "tiny") return {64, 2, 4, 2, 16, 128};
  if (preset == "small") return {256, 4, 8, 4, 32, 688};
  throw Error("--preset", "unknown preset '" + preset + "' (supported: tiny, small)", kExitUsage);
}

struct MoeDims {
  int64_t experts, used, ffn;
};

MoeDims preset_moe_dims(const std::string& preset) {
  if (preset == "tiny") return {8, 2, 32};
  return {16, 4, 128};  // small (preset_dims has checked the name)
}

}  // namespace

Seed synth_seed(uint64_t seed) {
  if (sodium_init() < 0) throw Error("libsodium", "initialisation failed", kExitError);
  const std::string msg = "aloepri synth seed " + std::to_string(seed);
  Seed s;
  crypto_hash_sha256(s.data(), reinterpret_cast<const unsigned char*>(msg.data()), msg.size());
  return s;
}

int64_t tokenizer_vocab_size(const json& tok, const std::string& where) {
  int64_t mx = -1;
  auto model = tok.find("model");
  if (model != tok.end() && model->is_object()) {
    auto vocab = model->find("vocab");
    if (vocab != model->end() && vocab->is_object())
      for (auto& [k, v] : vocab->items())
        if (v.is_number_integer()) mx = std::max(mx, v.get<int64_t>());
  }
  auto added = tok.find("added_tokens");
  if (added != tok.end() && added->is_array())
    for (auto& a : *added)
      if (a.is_object() && a.contains("id") && a["id"].is_number_integer())
        mx = std::max(mx, a["id"].get<int64_t>());
  require(mx >= 0, where, "no token ids in model.vocab or added_tokens");
  return mx + 1;
}

std::optional<int64_t> special_token_id(const json& cfg, const json& tok, const std::string& key,
                                        const std::string& where) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  std::string content;
  if (it->is_string()) {
    content = it->get<std::string>();
  } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    content = (*it)["content"].get<std::string>();
  } else {
    throw Error(where + ": " + key, "expected a string, {\"content\": ...} or null");
  }
  if (auto added = tok.find("added_tokens"); added != tok.end() && added->is_array())
    for (auto& a : *added)
      if (a.is_object() && a.value("content", std::string()) == content && a["id"].is_number_integer())
        return a["id"].get<int64_t>();
  if (auto model = tok.find("model"); model != tok.end() && model->is_object())
    if (auto vocab = model->find("vocab"); vocab != model->end() && vocab->is_object())
      if (auto v = vocab->find(content); v != vocab->end() && v->is_number_integer()) return v->get<int64_t>();
  throw Error(where + ": " + key, "token '" + content + "' is not in tokenizer.json");
}

ModelConfig synth_config(const SynthOptions& o) {
  require(!o.vocab_dir.empty(), "--vocab-from", "no vocabulary directory given", kExitUsage);
  const std::string tok_path = (fs::path(o.vocab_dir) / "tokenizer.json").string();
  const std::string cfg_path = (fs::path(o.vocab_dir) / "tokenizer_config.json").string();
  const json tok = read_json(tok_path);
  const json tcfg = read_json(cfg_path);

  const Dims p = preset_dims(o.preset);
  ModelConfig c;
  c.family = o.family;
  c.hidden_size = o.hidden.value_or(p.hidden);
  c.num_hidden_layers = o.layers.value_or(p.layers);
  c.num_attention_heads = o.heads.value_or(p.heads);
  c.num_key_value_heads = o.kv_heads.value_or(p.kv_heads);
  // When the width or head count changes but head_dim is not given, keep hidden = heads * head_dim
  // (the usual llama/mistral/qwen2 shape).
  if (o.head_dim) {
    c.head_dim = *o.head_dim;
  } else if (o.hidden || o.heads) {
    require(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, "--hidden",
            "not divisible by --heads; give --head-dim", kExitUsage);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  } else {
    c.head_dim = p.head_dim;
  }
  c.intermediate_size = o.ffn.value_or(p.ffn);
  c.vocab_size = tokenizer_vocab_size(tok, tok_path);
  c.max_position_embeddings = o.max_position_embeddings;
  const bool moe = o.family == Family::Qwen3Moe;
  const bool qwen = o.family == Family::Qwen2 || o.family == Family::Qwen3 || moe;
  const bool deepseek = o.family == Family::DeepseekV2 || o.family == Family::DeepseekV3;
  c.rms_norm_eps = qwen ? 1e-6 : 1e-5;
  c.rope_theta = o.rope_theta.value_or(o.family == Family::Llama ? 10000.0 : 1000000.0);
  // Qwen3-MoE checkpoints (30B-A3B, 235B-A22B) have an untied head.
  c.tie_word_embeddings = o.tie.value_or(qwen && !moe);
  c.attention_bias = o.family == Family::Qwen2;
  c.qk_norm = o.family == Family::Qwen3 || moe;
  if (deepseek) {
    const bool small = o.preset == "small";
    c.num_hidden_layers = o.layers.value_or(small ? 4 : 3);
    c.num_key_value_heads = c.num_attention_heads;
    // DeepSeek-V3's proportions: a head's kv_b rows (nope + v) half the kv latent, its q_b rows
    // (nope + rope) a third of the q latent or less.
    c.q_lora_rank = o.q_lora.value_or(small ? 192 : 48);
    c.kv_lora_rank = small ? 128 : 32;
    c.qk_nope_head_dim = small ? 32 : 8;
    c.qk_rope_head_dim = small ? 16 : 8;
    c.v_head_dim = small ? 32 : 8;
    c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
    const MoeDims md = preset_moe_dims(o.preset);
    c.num_experts = o.experts.value_or(md.experts);
    c.num_experts_per_tok = o.experts_per_tok.value_or(md.used);
    c.moe_intermediate_size = o.moe_ffn.value_or(md.ffn);
    c.n_shared_experts = 1;
    c.first_k_dense_replace = 1;
    const bool v3 = o.family == Family::DeepseekV3;
    c.scoring_func = v3 ? "sigmoid" : "softmax";
    c.topk_method = v3 ? "noaux_tc" : "greedy";
    c.n_group = v3 ? 4 : 1;
    c.topk_group = v3 ? 2 : 1;
    c.norm_topk_prob = o.norm_topk_prob.value_or(v3);
    c.routed_scaling_factor = v3 ? 2.5 : 1.0;
    c.rms_norm_eps = 1e-6;
  } else if (moe) {
    const MoeDims md = preset_moe_dims(o.preset);
    c.num_experts = o.experts.value_or(md.experts);
    c.num_experts_per_tok = o.experts_per_tok.value_or(md.used);
    c.moe_intermediate_size = o.moe_ffn.value_or(md.ffn);
    c.norm_topk_prob = o.norm_topk_prob.value_or(true);
    require(c.num_experts_per_tok <= c.num_experts, "--experts-per-tok", "exceeds --experts", kExitUsage);
  } else {
    require(!o.experts && !o.experts_per_tok && !o.moe_ffn && !o.norm_topk_prob, "--experts",
            "only qwen3moe and deepseek have experts", kExitUsage);
  }
  require(!o.q_lora || deepseek, "--q-lora", "only deepseek has a query latent", kExitUsage);
  c.torch_dtype = torch_dtype_name(o.dtype);
  if (o.rope_scaling == "yarn") {
    // DeepSeek's released settings: the original context 4096, betas 32 / 1, and mscale ==
    // mscale_all_dim (0.707 on V2, 1 on V3); the context grows by the factor.
    require(deepseek, "--rope-scaling", "yarn is only supported for deepseek_v2 / deepseek_v3", kExitUsage);
    require(o.rope_factor > 0, "--rope-factor", "must be positive", kExitUsage);
    RopeScaling& rs = c.rope_scaling;
    rs.type = "yarn";
    rs.factor = o.rope_factor;
    rs.original_max_position_embeddings = 4096;
    rs.mscale = rs.mscale_all_dim = o.family == Family::DeepseekV2 ? 0.707 : 1.0;
    c.max_position_embeddings = std::max(c.max_position_embeddings, int64_t(4096 * std::max(1.0, o.rope_factor)));
  } else if (!o.rope_scaling.empty()) {
    require(o.rope_scaling == "llama3" || o.rope_scaling == "linear", "--rope-scaling",
            "unknown type '" + o.rope_scaling + "' (supported: llama3, linear, yarn)", kExitUsage);
    c.rope_scaling.type = o.rope_scaling;
    c.rope_scaling.factor = o.rope_factor;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
  }
  c.bos_token_id = special_token_id(tcfg, tok, "bos_token", cfg_path);
  c.eos_token_id = special_token_id(tcfg, tok, "eos_token", cfg_path);
  // Fields HF would otherwise default to something else: Mistral's sliding_window defaults to
  // 4096 and Qwen2's window settings exist; the synthetic models use full attention.
  c.raw = json::object();
  if (o.family == Family::Mistral) c.raw["sliding_window"] = nullptr;
  if (qwen) {
    c.raw["use_sliding_window"] = false;
    c.raw["sliding_window"] = nullptr;
    c.raw["max_window_layers"] = c.num_hidden_layers;
  }
  c.raw["initializer_range"] = 0.02;
  c.raw["model_type"] = family_name(o.family);
  require(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0, "--kv-heads",
          "must divide --heads", kExitUsage);
  require(c.head_dim % 2 == 0, "--head-dim", "must be even (RoPE rotates pairs)", kExitUsage);
  c.validate("synth config");
  return c;
}

void synthesize(const SynthOptions& o, const std::string& out_dir, bool overwrite) {
  const ModelConfig c = synth_config(o);
  const Seed seed = synth_seed(o.seed);
  refuse_existing(out_dir, overwrite);
  AtomicDir dir(out_dir, overwrite);

  write_file_atomic(dir.file("config.json"), c.to_json().dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path src = fs::path(o.vocab_dir) / f;
    if (!fs::exists(src) && std::string(f) == "special_tokens_map.json") continue;  // optional
    write_file_atomic(dir.file(f), read_file(src.string()));
  }

  SyntheticInit init;
  init.seed = seed;
  init.stream_prefix = "synth/";
  init.embed_std = 1.0 / std::sqrt(double(c.hidden_size));  // realistic logits (synth.h)
  write_synthetic_tensors(dir.temp_path(), c, init, o.dtype, o.max_shard_bytes,
                          {{"format", "pt"}, {"aloepri_synth_seed", std::to_string(o.seed)}}, "synth");
  dir.commit();
}

}  // namespace aloepri
