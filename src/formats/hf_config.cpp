// Hugging Face config.json for the decoder families (llama, mistral, qwen2, qwen3, qwen3_moe,
// deepseek_v2, deepseek_v3).
// Defaults follow the transformers configuration classes, so a config that omits a field means
// what it means to transformers. Anything that would change the forward pass in a way we do not
// implement (another activation, MLP biases, an unknown RoPE scaling) is refused, not ignored.
#include "aloepri/formats/hf_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace aloepri {

namespace {

struct FamilyInfo {
  Family family;
  const char* model_type;
  const char* architecture;
  int64_t default_max_pos;  // transformers' default max_position_embeddings
};

const FamilyInfo kFamilies[] = {
    {Family::Llama, "llama", "LlamaForCausalLM", 2048},
    {Family::Mistral, "mistral", "MistralForCausalLM", 4096 * 32},
    {Family::Qwen2, "qwen2", "Qwen2ForCausalLM", 32768},
    {Family::Qwen3, "qwen3", "Qwen3ForCausalLM", 32768},
    {Family::Qwen3Moe, "qwen3_moe", "Qwen3MoeForCausalLM", 32768},
    {Family::DeepseekV2, "deepseek_v2", "DeepseekV2ForCausalLM", 2048},
    {Family::DeepseekV3, "deepseek_v3", "DeepseekV3ForCausalLM", 4096},
};

const FamilyInfo& info(Family f) {
  for (auto& i : kFamilies)
    if (i.family == f) return i;
  return kFamilies[0];
}

std::string supported_list() {
  std::string s;
  for (auto& i : kFamilies) s += (s.empty() ? "" : ", ") + std::string(i.model_type);
  return s;
}

// Field access: a missing key and an explicit null both mean "absent" (transformers writes
// nulls for unset optional fields such as head_dim or rope_scaling).
const json* field(const json& j, const char* k) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t as_int(const json& v, const std::string& where, const std::string& name) {
  if (v.is_number_integer() || v.is_number_unsigned()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
      throw Error(where, "field '" + name + "' is too large");
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  throw Error(where, "field '" + name + "' must be an integer, got " + v.dump());
}

double as_double(const json& v, const std::string& where, const std::string& name) {
  if (!v.is_number()) throw Error(where, "field '" + name + "' must be a number, got " + v.dump());
  return v.get<double>();
}

bool as_bool(const json& v, const std::string& where, const std::string& name) {
  if (!v.is_boolean()) throw Error(where, "field '" + name + "' must be true or false, got " + v.dump());
  return v.get<bool>();
}

int64_t required_int(const json& j, const char* k, const std::string& where) {
  const json* v = field(j, k);
  if (!v) throw Error(where, std::string("missing required field '") + k + "'");
  return as_int(*v, where, k);
}

// bos/eos may be a single id or a list (Llama-3.1 lists three eos ids); we keep the first and
// leave the list in `raw`, which to_json writes back unchanged.
std::optional<int64_t> token_id(const json& j, const char* k, const std::string& where) {
  const json* v = field(j, k);
  if (!v) return std::nullopt;
  if (v->is_array()) {
    if (v->empty()) return std::nullopt;
    return as_int((*v)[0], where, k);
  }
  return as_int(*v, where, k);
}

// DeepSeek-V2/V3 fields, with transformers' DeepseekV2Config / DeepseekV3Config defaults where
// a field may be omitted; the attention sizes have no sensible default and are required.
void parse_deepseek(const json& j, const std::string& where, ModelConfig& c) {
  const bool v3 = c.family == Family::DeepseekV3;
  const json* v;
  auto opt_int = [&](const char* k, int64_t dflt) { return (v = field(j, k)) ? as_int(*v, where, k) : dflt; };
  auto opt_str = [&](const char* k, const char* dflt) {
    if (!(v = field(j, k))) return std::string(dflt);
    if (!v->is_string()) throw Error(where, std::string("field '") + k + "' must be a string, got " + v->dump());
    return v->get<std::string>();
  };
  // Bounded here, before head_dim adds two of them (validate() repeats the checks for configs
  // built in code).
  auto size = [&](int64_t x, const char* k) {
    if (x < 0 || x > (1 << 16)) throw Error(where, std::string("field '") + k + "' is out of range: " + std::to_string(x));
    return x;
  };
  c.q_lora_rank = size(opt_int("q_lora_rank", 0), "q_lora_rank");  // null: queries straight from the residual (V2-Lite)
  c.kv_lora_rank = size(required_int(j, "kv_lora_rank", where), "kv_lora_rank");
  c.qk_nope_head_dim = size(required_int(j, "qk_nope_head_dim", where), "qk_nope_head_dim");
  c.qk_rope_head_dim = size(required_int(j, "qk_rope_head_dim", where), "qk_rope_head_dim");
  c.v_head_dim = size(required_int(j, "v_head_dim", where), "v_head_dim");
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  c.num_experts = opt_int("n_routed_experts", 0);
  c.num_experts_per_tok = opt_int("num_experts_per_tok", 0);
  c.moe_intermediate_size = opt_int("moe_intermediate_size", v3 ? 2048 : 1407);
  c.n_shared_experts = opt_int("n_shared_experts", 0);
  c.first_k_dense_replace = opt_int("first_k_dense_replace", 0);
  c.moe_layer_freq = opt_int("moe_layer_freq", 1);
  c.n_group = opt_int("n_group", 1);
  c.topk_group = opt_int("topk_group", 1);
  c.norm_topk_prob = (v = field(j, "norm_topk_prob")) ? as_bool(*v, where, "norm_topk_prob") : v3;
  c.routed_scaling_factor =
      (v = field(j, "routed_scaling_factor")) ? as_double(*v, where, "routed_scaling_factor") : (v3 ? 2.5 : 1.0);
  c.scoring_func = opt_str("scoring_func", v3 ? "sigmoid" : "softmax");
  c.topk_method = opt_str("topk_method", v3 ? "noaux_tc" : "greedy");
}

}  // namespace

std::string family_name(Family f) { return info(f).model_type; }

std::vector<std::string> supported_families() {
  std::vector<std::string> v;
  for (auto& i : kFamilies) v.push_back(i.model_type);
  return v;
}

namespace {

// rope_scaling of type yarn, as DeepSeek's configs write it. transformers and DeepSeek's own
// modeling code derive the cos/sin magnitude from mscale and mscale_all_dim; they agree when both
// are given (every released checkpoint) or neither, so another mix is refused rather than guessed.
void parse_yarn(const json& rs, const std::string& where, RopeScaling& y) {
  y = RopeScaling{};
  y.type = "yarn";
  for (const char* k : {"factor", "original_max_position_embeddings"})
    if (!field(rs, k)) throw Error(where, std::string("rope_scaling: missing required field '") + k + "' for yarn");
  y.factor = as_double(rs["factor"], where, "rope_scaling.factor");
  y.original_max_position_embeddings =
      as_int(rs["original_max_position_embeddings"], where, "rope_scaling.original_max_position_embeddings");
  if (const json* v = field(rs, "beta_fast")) y.beta_fast = as_double(*v, where, "rope_scaling.beta_fast");
  if (const json* v = field(rs, "beta_slow")) y.beta_slow = as_double(*v, where, "rope_scaling.beta_slow");
  const json* ms = field(rs, "mscale");
  const json* ma = field(rs, "mscale_all_dim");
  if (ms) y.mscale = as_double(*ms, where, "rope_scaling.mscale");
  if (ma) y.mscale_all_dim = as_double(*ma, where, "rope_scaling.mscale_all_dim");
  if (ma && !ms)
    throw Error(where, "rope_scaling: 'mscale_all_dim' without 'mscale' (transformers and DeepSeek's code scale "
                       "cos/sin differently then; give both)");
  if (ms && !ma && y.mscale != 1.0)
    throw Error(where, "rope_scaling: 'mscale' without 'mscale_all_dim' (transformers and DeepSeek's code scale "
                       "cos/sin differently then; give both)");
  if (field(rs, "attention_factor"))
    throw Error(where, "rope_scaling: 'attention_factor' is not supported (DeepSeek's mscale/mscale_all_dim are)");
  if (const json* v = field(rs, "truncate"); v && !as_bool(*v, where, "rope_scaling.truncate"))
    throw Error(where, "rope_scaling: truncate=false is not supported");
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& where) {
  if (!j.is_object()) throw Error(where, "not a JSON object");
  ModelConfig c;
  c.raw = j;

  // Family: model_type, or the first architecture when model_type is absent.
  const FamilyInfo* fam = nullptr;
  if (const json* mt = field(j, "model_type")) {
    if (!mt->is_string()) throw Error(where, "field 'model_type' must be a string");
    std::string s = mt->get<std::string>();
    for (auto& i : kFamilies)
      if (s == i.model_type) fam = &i;
    if (!fam)
      throw Error(where, "unsupported model_type '" + s + "' (supported: " + supported_list() + ")");
  } else if (const json* ar = field(j, "architectures"); ar && ar->is_array() && !ar->empty() &&
                                                         (*ar)[0].is_string()) {
    std::string s = (*ar)[0].get<std::string>();
    for (auto& i : kFamilies)
      if (s == i.architecture) fam = &i;
    if (!fam)
      throw Error(where, "unsupported architecture '" + s + "' (supported: " + supported_list() + ")");
  } else {
    throw Error(where, "missing required field 'model_type'");
  }
  c.family = fam->family;

  c.hidden_size = required_int(j, "hidden_size", where);
  c.num_hidden_layers = required_int(j, "num_hidden_layers", where);
  c.num_attention_heads = required_int(j, "num_attention_heads", where);
  c.intermediate_size = required_int(j, "intermediate_size", where);
  c.vocab_size = required_int(j, "vocab_size", where);
  const json* v;
  // transformers: num_key_value_heads defaults to num_attention_heads (plain multi-head).
  c.num_key_value_heads = (v = field(j, "num_key_value_heads")) ? as_int(*v, where, "num_key_value_heads")
                                                                : c.num_attention_heads;
  if (c.family == Family::DeepseekV2 || c.family == Family::DeepseekV3) {
    parse_deepseek(j, where, c);  // head_dim = nope + rope (transformers' head_dim field means rope)
  } else if ((v = field(j, "head_dim"))) {
    c.head_dim = as_int(*v, where, "head_dim");
  } else {
    if (c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads != 0)
      throw Error(where, "hidden_size " + std::to_string(c.hidden_size) +
                             " is not divisible by num_attention_heads " +
                             std::to_string(c.num_attention_heads) + " and no head_dim is given");
    c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  }
  c.max_position_embeddings = (v = field(j, "max_position_embeddings"))
                                  ? as_int(*v, where, "max_position_embeddings")
                                  : fam->default_max_pos;
  c.rms_norm_eps = (v = field(j, "rms_norm_eps")) ? as_double(*v, where, "rms_norm_eps") : 1e-6;
  c.rope_theta = (v = field(j, "rope_theta")) ? as_double(*v, where, "rope_theta") : 10000.0;
  c.tie_word_embeddings = (v = field(j, "tie_word_embeddings")) ? as_bool(*v, where, "tie_word_embeddings")
                                                                : false;
  switch (c.family) {
    case Family::Qwen2: c.attention_bias = true; break;  // Qwen2 q/k/v projections always have biases
    case Family::Mistral: c.attention_bias = false; break;
    case Family::DeepseekV2:
    case Family::DeepseekV3:
      if ((v = field(j, "attention_bias")) && as_bool(*v, where, "attention_bias"))
        throw Error(where, "attention_bias=true is not supported for DeepSeek (no released model has it)");
      c.attention_bias = false;
      break;
    default:
      c.attention_bias = (v = field(j, "attention_bias")) ? as_bool(*v, where, "attention_bias") : false;
  }
  c.qk_norm = c.family == Family::Qwen3 || c.family == Family::Qwen3Moe;
  if (c.family == Family::Qwen3Moe) {
    // transformers' Qwen3MoeConfig defaults.
    c.num_experts = (v = field(j, "num_experts")) ? as_int(*v, where, "num_experts") : 128;
    c.num_experts_per_tok = (v = field(j, "num_experts_per_tok")) ? as_int(*v, where, "num_experts_per_tok") : 8;
    c.moe_intermediate_size =
        (v = field(j, "moe_intermediate_size")) ? as_int(*v, where, "moe_intermediate_size") : 768;
    c.norm_topk_prob = (v = field(j, "norm_topk_prob")) ? as_bool(*v, where, "norm_topk_prob") : false;
    c.decoder_sparse_step = (v = field(j, "decoder_sparse_step")) ? as_int(*v, where, "decoder_sparse_step") : 1;
    if ((v = field(j, "mlp_only_layers"))) {
      if (!v->is_array()) throw Error(where, "field 'mlp_only_layers' must be a list of layer indices");
      for (const auto& x : *v) c.mlp_only_layers.push_back(as_int(x, where, "mlp_only_layers"));
    }
  }
  c.bos_token_id = token_id(j, "bos_token_id", where);
  c.eos_token_id = token_id(j, "eos_token_id", where);
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  if ((v = field(j, "torch_dtype")) || (v = field(j, "dtype"))) {
    if (!v->is_string()) throw Error(where, "field 'torch_dtype' must be a string");
    c.torch_dtype = v->get<std::string>();
  }

  if ((v = field(j, "hidden_act")) || (v = field(j, "hidden_activation"))) {
    if (!v->is_string() || v->get<std::string>() != "silu")
      throw Error(where, "unsupported hidden_act " + v->dump() + " (only \"silu\" is supported)");
  }
  if ((v = field(j, "mlp_bias")) && as_bool(*v, where, "mlp_bias"))
    throw Error(where, "mlp_bias=true is not supported");

  if (const json* rs = field(j, "rope_scaling")) {
    if (!rs->is_object()) throw Error(where, "field 'rope_scaling' must be an object or null");
    const json* t = field(*rs, "rope_type");
    if (!t) t = field(*rs, "type");
    if (!t || !t->is_string()) throw Error(where, "rope_scaling: missing required field 'rope_type'");
    std::string type = t->get<std::string>();
    if (type == "default") {
      c.rope_scaling = RopeScaling{};
    } else if (type == "llama3" || type == "linear") {
      c.rope_scaling.type = type;
      const json* f = field(*rs, "factor");
      if (!f) throw Error(where, "rope_scaling: missing required field 'factor'");
      c.rope_scaling.factor = as_double(*f, where, "rope_scaling.factor");
      if (type == "llama3") {
        for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
          if (!field(*rs, k)) throw Error(where, std::string("rope_scaling: missing required field '") + k + "'");
        c.rope_scaling.low_freq_factor = as_double((*rs)["low_freq_factor"], where, "rope_scaling.low_freq_factor");
        c.rope_scaling.high_freq_factor = as_double((*rs)["high_freq_factor"], where, "rope_scaling.high_freq_factor");
        c.rope_scaling.original_max_position_embeddings = as_int(
            (*rs)["original_max_position_embeddings"], where, "rope_scaling.original_max_position_embeddings");
      }
    } else if (type == "yarn") {
      parse_yarn(*rs, where, c.rope_scaling);
    } else {
      throw Error(where, "unsupported rope_scaling type '" + type + "' (supported: llama3, linear, yarn)");
    }
  }
  c.validate(where);
  return c;
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int64_t x, const char* name) {
    if (x <= 0) throw Error(where, std::string("field '") + name + "' must be positive, got " + std::to_string(x));
  };
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(intermediate_size, "intermediate_size");
  positive(vocab_size, "vocab_size");
  positive(max_position_embeddings, "max_position_embeddings");
  // Far beyond any real model, and small enough that every shape product fits in 64 bits.
  auto plausible = [&](int64_t x, int64_t limit, const char* name) {
    if (x > limit) throw Error(where, std::string("field '") + name + "' is implausibly large: " + std::to_string(x));
  };
  plausible(hidden_size, 1 << 20, "hidden_size");
  plausible(num_hidden_layers, 1 << 16, "num_hidden_layers");
  plausible(num_attention_heads, 1 << 16, "num_attention_heads");
  plausible(head_dim, 1 << 16, "head_dim");
  plausible(intermediate_size, 1 << 22, "intermediate_size");
  plausible(vocab_size, 1 << 24, "vocab_size");
  if (num_attention_heads % num_key_value_heads != 0)
    throw Error(where, "num_attention_heads " + std::to_string(num_attention_heads) +
                           " is not a multiple of num_key_value_heads " + std::to_string(num_key_value_heads));
  if (!mla() && head_dim % 2 != 0)
    throw Error(where, "head_dim " + std::to_string(head_dim) + " is odd; RoPE needs an even head_dim");
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
    throw Error(where, "field 'rms_norm_eps' must be positive");
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    throw Error(where, "field 'rope_theta' must be positive");
  if (!rope_scaling.type.empty()) {
    if (!(rope_scaling.factor > 0)) throw Error(where, "rope_scaling: 'factor' must be positive");
    if (rope_scaling.type == "llama3") {
      if (!(rope_scaling.low_freq_factor > 0) || !(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor))
        throw Error(where, "rope_scaling: need 0 < low_freq_factor < high_freq_factor");
      if (rope_scaling.original_max_position_embeddings <= 0)
        throw Error(where, "rope_scaling: 'original_max_position_embeddings' must be positive");
    }
    if (rope_scaling.type == "yarn") {
      if (!mla())
        throw Error(where, "rope_scaling: yarn is only supported for deepseek_v2 / deepseek_v3 (family " +
                               family_name(family) + ")");
      if (!std::isfinite(rope_scaling.factor)) throw Error(where, "rope_scaling: 'factor' must be finite");
      if (!(rope_theta > 1)) throw Error(where, "rope_scaling: yarn needs rope_theta > 1 (its correction range divides by ln theta)");
      if (rope_scaling.original_max_position_embeddings <= 0)
        throw Error(where, "rope_scaling: 'original_max_position_embeddings' must be positive");
      if (!(rope_scaling.beta_fast > 0) || !(rope_scaling.beta_slow > 0) || !std::isfinite(rope_scaling.beta_fast) ||
          !std::isfinite(rope_scaling.beta_slow))
        throw Error(where, "rope_scaling: 'beta_fast' and 'beta_slow' must be positive");
      if (!(rope_scaling.mscale >= 0) || !(rope_scaling.mscale_all_dim >= 0) || !std::isfinite(rope_scaling.mscale) ||
          !std::isfinite(rope_scaling.mscale_all_dim))
        throw Error(where, "rope_scaling: 'mscale' and 'mscale_all_dim' must be finite and non-negative");
    }
  }
  if (qk_norm && family != Family::Qwen3 && family != Family::Qwen3Moe)
    throw Error(where, "q/k norms are only defined for qwen3 and qwen3_moe");
  if (family == Family::Qwen3Moe) {
    positive(num_experts, "num_experts");
    positive(num_experts_per_tok, "num_experts_per_tok");
    positive(moe_intermediate_size, "moe_intermediate_size");
    positive(decoder_sparse_step, "decoder_sparse_step");
    plausible(num_experts, 1 << 16, "num_experts");
    plausible(moe_intermediate_size, 1 << 22, "moe_intermediate_size");
    if (num_experts_per_tok > num_experts)
      throw Error(where, "field 'num_experts_per_tok' " + std::to_string(num_experts_per_tok) +
                             " exceeds num_experts " + std::to_string(num_experts));
    for (int64_t l : mlp_only_layers)
      if (l < 0 || l >= num_hidden_layers)
        throw Error(where, "field 'mlp_only_layers' names layer " + std::to_string(l) + ", the model has " +
                               std::to_string(num_hidden_layers));
  } else if (mla()) {
    for (auto [x, name] : {std::pair{kv_lora_rank, "kv_lora_rank"}, {qk_nope_head_dim, "qk_nope_head_dim"},
                           {qk_rope_head_dim, "qk_rope_head_dim"}, {v_head_dim, "v_head_dim"}}) {
      positive(x, name);
      plausible(x, 1 << 16, name);
    }
    if (q_lora_rank < 0) throw Error(where, "field 'q_lora_rank' must be positive or null");
    plausible(q_lora_rank, 1 << 16, "q_lora_rank");
    if (qk_rope_head_dim % 2 != 0)
      throw Error(where, "qk_rope_head_dim " + std::to_string(qk_rope_head_dim) + " is odd; RoPE rotates pairs");
    if (num_key_value_heads != num_attention_heads)
      throw Error(where, "num_key_value_heads must equal num_attention_heads for DeepSeek (one latent serves all heads)");
    if (num_experts < 0) throw Error(where, "field 'n_routed_experts' must not be negative");
    // The shared experts' width (moe_intermediate_size x n_shared_experts) is a tensor dimension.
    if (n_shared_experts < 0 || moe_intermediate_size < 0)
      throw Error(where, "fields 'n_shared_experts' and 'moe_intermediate_size' must not be negative");
    plausible(moe_intermediate_size, 1 << 22, "moe_intermediate_size");
    plausible(n_shared_experts, 1 << 8, "n_shared_experts");
    if (num_experts > 0) {
      positive(num_experts_per_tok, "num_experts_per_tok");
      positive(moe_intermediate_size, "moe_intermediate_size");
      positive(moe_layer_freq, "moe_layer_freq");
      positive(n_group, "n_group");
      positive(topk_group, "topk_group");
      plausible(num_experts, 1 << 16, "n_routed_experts");
      if (num_experts_per_tok > num_experts)
        throw Error(where, "field 'num_experts_per_tok' " + std::to_string(num_experts_per_tok) +
                               " exceeds n_routed_experts " + std::to_string(num_experts));
      if (num_experts % n_group != 0)
        throw Error(where, "n_routed_experts " + std::to_string(num_experts) + " is not a multiple of n_group " +
                               std::to_string(n_group));
      if (topk_group > n_group) throw Error(where, "field 'topk_group' exceeds n_group");
      if (scoring_func != "softmax" && scoring_func != "sigmoid")
        throw Error(where, "unsupported scoring_func '" + scoring_func + "' (supported: softmax, sigmoid)");
      if (topk_method != "greedy" && topk_method != "group_limited_greedy" && topk_method != "noaux_tc")
        throw Error(where, "unsupported topk_method '" + topk_method +
                               "' (supported: greedy, group_limited_greedy, noaux_tc)");
      if (topk_method != "greedy" && num_experts_per_tok > topk_group * (num_experts / n_group))
        throw Error(where, "num_experts_per_tok exceeds the experts of the topk_group groups kept");
      if (!(routed_scaling_factor > 0) || !std::isfinite(routed_scaling_factor))
        throw Error(where, "field 'routed_scaling_factor' must be positive");
    }
  } else if (num_experts != 0) {
    throw Error(where, "experts are only defined for qwen3_moe and deepseek");
  }
  if (family == Family::Mistral && attention_bias) throw Error(where, "mistral has no attention biases");
  if (family == Family::Qwen2 && !attention_bias) throw Error(where, "qwen2 always has q/k/v biases");
}

ModelConfig ModelConfig::load(const std::string& path_or_dir) {
  std::string path = path_or_dir;
  std::error_code ec;
  if (fs::is_directory(path, ec)) path = (fs::path(path) / "config.json").string();
  if (!fs::exists(path, ec)) throw Error(path, "not found");
  std::string text = read_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path, std::string("invalid JSON: ") + e.what());
  }
  return from_json(j, path);
}

json ModelConfig::to_json() const {
  // Start from what was read so unknown fields (sliding_window, transformers_version, ...)
  // survive; every field we model is then written explicitly.
  json j = raw.is_object() ? raw : json::object();
  const FamilyInfo& fi = info(family);
  j["model_type"] = fi.model_type;
  j["architectures"] = json::array({fi.architecture});
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  if (!mla()) j["head_dim"] = head_dim;  // always explicit: qwen3's differs from hidden/heads
  j["intermediate_size"] = intermediate_size;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["hidden_act"] = "silu";
  if (rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    json rs = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      rs["low_freq_factor"] = rope_scaling.low_freq_factor;
      rs["high_freq_factor"] = rope_scaling.high_freq_factor;
      rs["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    if (rope_scaling.type == "yarn") {
      rs["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
      rs["beta_fast"] = rope_scaling.beta_fast;
      rs["beta_slow"] = rope_scaling.beta_slow;
      rs["mscale"] = rope_scaling.mscale;
      rs["mscale_all_dim"] = rope_scaling.mscale_all_dim;
    }
    j["rope_scaling"] = rs;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (family == Family::Llama || family == Family::Qwen3 || family == Family::Qwen3Moe)
    j["attention_bias"] = attention_bias;
  if (family == Family::Qwen3Moe) {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["norm_topk_prob"] = norm_topk_prob;
    j["decoder_sparse_step"] = decoder_sparse_step;
    j["mlp_only_layers"] = mlp_only_layers;
  }
  if (mla()) {
    j["q_lora_rank"] = q_lora_rank > 0 ? json(q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["v_head_dim"] = v_head_dim;
    j["attention_bias"] = false;
    j["n_routed_experts"] = num_experts > 0 ? json(num_experts) : json(nullptr);
    j["num_experts_per_tok"] = num_experts > 0 ? json(num_experts_per_tok) : json(nullptr);
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["n_shared_experts"] = n_shared_experts;
    j["first_k_dense_replace"] = first_k_dense_replace;
    j["moe_layer_freq"] = moe_layer_freq;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["norm_topk_prob"] = norm_topk_prob;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["scoring_func"] = scoring_func;
    j["topk_method"] = topk_method;
  }
  j.erase("dtype");
  j["torch_dtype"] = torch_dtype;
  auto put_id = [&](const char* k, const std::optional<int64_t>& id) {
    if (!id) {
      j.erase(k);
      return;
    }
    // Keep a list of ids when its first entry is still ours (see token_id()).
    auto it = j.find(k);
    if (it != j.end() && it->is_array() && !it->empty() && (*it)[0] == *id) return;
    j[k] = *id;
  };
  put_id("bos_token_id", bos_token_id);
  put_id("eos_token_id", eos_token_id);
  return j;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (mla()) return num_experts > 0 && layer >= first_k_dense_replace && moe_layer_freq > 0 && layer % moe_layer_freq == 0;
  if (num_experts <= 0 || decoder_sparse_step <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

std::vector<double> rope_inv_freq(double theta, int64_t dh) {
  std::vector<double> f(static_cast<size_t>(dh / 2));
  for (int64_t i = 0; i < dh / 2; ++i) f[size_t(i)] = 1.0 / std::pow(theta, double(2 * i) / double(dh));
  return f;
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int64_t dh = c.rope_dim();
  require(dh > 0 && dh % 2 == 0, c.mla() ? "config.json: qk_rope_head_dim" : "config.json: head_dim",
          "must be even and positive for RoPE");
  std::vector<double> f = rope_inv_freq(c.rope_theta, dh);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type.empty() || rs.type == "default") return f;
  if (rs.type == "linear") {
    require(rs.factor > 0, "config.json: rope_scaling.factor", "must be positive");
    for (double& x : f) x /= rs.factor;
    return f;
  }
  if (rs.type == "llama3") {
    // transformers' _compute_llama3_parameters: wavelengths longer than old_ctx/low_freq_factor
    // are divided by factor, shorter than old_ctx/high_freq_factor kept, and in between
    // interpolated linearly in old_ctx/wavelen.
    require(rs.factor > 0, "config.json: rope_scaling.factor", "must be positive");
    require(rs.high_freq_factor != rs.low_freq_factor, "config.json: rope_scaling",
            "high_freq_factor equals low_freq_factor");
    const double old_ctx = double(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    for (double& x : f) {
      const double wavelen = 2.0 * M_PI / x;
      if (wavelen < high_wavelen) continue;  // high frequency: unchanged
      if (wavelen > low_wavelen) {           // low frequency: scaled
        x /= rs.factor;
        continue;
      }
      const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      x = (1.0 - smooth) * x / rs.factor + smooth * x;
    }
    return f;
  }
  if (rs.type == "yarn") {
    // transformers' _compute_yarn_parameters (truncate): dims whose wavelength turns fewer than
    // beta_slow times over the original context are interpolated (/ factor), more than beta_fast
    // times kept, and a linear ramp over the dim index in between.
    require(rs.factor > 0, "config.json: rope_scaling.factor", "must be positive");
    const double dim = double(dh), orig = double(rs.original_max_position_embeddings);
    auto corr = [&](double rotations) {
      return dim * std::log(orig / (rotations * 2.0 * M_PI)) / (2.0 * std::log(c.rope_theta));
    };
    const double low = std::max(std::floor(corr(rs.beta_fast)), 0.0);
    double high = std::min(std::ceil(corr(rs.beta_slow)), dim - 1.0);
    if (high == low) high += 0.001;
    for (size_t i = 0; i < f.size(); ++i) {
      const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
      f[i] = f[i] / rs.factor * ramp + f[i] * (1.0 - ramp);
    }
    return f;
  }
  throw Error("config.json: rope_scaling", "unsupported rope type '" + rs.type +
                                               "' (supported: none, linear, llama3, yarn)");
}

namespace {
// DeepSeek's yarn_get_mscale.
double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }
}  // namespace

double rope_magnitude(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type != "yarn") return 1.0;
  return yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim);
}

double attention_score_factor(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type != "yarn" || !c.mla() || rs.mscale_all_dim == 0.0) return 1.0;
  const double m = yarn_mscale(rs.factor, rs.mscale_all_dim);
  return m * m;
}

}  // namespace aloepri
