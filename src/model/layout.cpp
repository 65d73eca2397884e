// The decoder families' tensor tables and the functions that instantiate them for a config.
#include "aloepri/model/layout.h"

#include "aloepri/core/error.h"

namespace aloepri::layout {

namespace {

// llama, mistral, qwen2, qwen3 and qwen3_moe share one layout; the config's flags (biases, q/k
// norms, sparse layers, tying) decide which rows exist. llama.cpp's llama arch stores q and k
// rows interleaved per RoPE pair; the qwen2/qwen3 archs (NEOX RoPE) keep HF's order, which the
// exporter decides per arch from rope_rows.
const std::vector<TensorDef> kDecoder = {
    {Role::Embedding, Scope::Model, When::Always, "model.embed_tokens.weight", "token_embd.weight", Dim::Vocab, Dim::Hidden, false},
    {Role::AttnNorm, Scope::Layer, When::Always, "model.layers.{l}.input_layernorm.weight", "blk.{l}.attn_norm.weight", Dim::Hidden, Dim::None, false},
    {Role::Query, Scope::Layer, When::Always, "model.layers.{l}.self_attn.q_proj.weight", "blk.{l}.attn_q.weight", Dim::QDim, Dim::Hidden, true},
    {Role::Key, Scope::Layer, When::Always, "model.layers.{l}.self_attn.k_proj.weight", "blk.{l}.attn_k.weight", Dim::KvDim, Dim::Hidden, true},
    {Role::Value, Scope::Layer, When::Always, "model.layers.{l}.self_attn.v_proj.weight", "blk.{l}.attn_v.weight", Dim::KvDim, Dim::Hidden, false},
    {Role::QueryBias, Scope::Layer, When::AttnBias, "model.layers.{l}.self_attn.q_proj.bias", "blk.{l}.attn_q.bias", Dim::QDim, Dim::None, true},
    {Role::KeyBias, Scope::Layer, When::AttnBias, "model.layers.{l}.self_attn.k_proj.bias", "blk.{l}.attn_k.bias", Dim::KvDim, Dim::None, true},
    {Role::ValueBias, Scope::Layer, When::AttnBias, "model.layers.{l}.self_attn.v_proj.bias", "blk.{l}.attn_v.bias", Dim::KvDim, Dim::None, false},
    {Role::QNorm, Scope::Layer, When::QkNorm, "model.layers.{l}.self_attn.q_norm.weight", "blk.{l}.attn_q_norm.weight", Dim::HeadDim, Dim::None, false},
    {Role::KNorm, Scope::Layer, When::QkNorm, "model.layers.{l}.self_attn.k_norm.weight", "blk.{l}.attn_k_norm.weight", Dim::HeadDim, Dim::None, false},
    {Role::Output, Scope::Layer, When::Always, "model.layers.{l}.self_attn.o_proj.weight", "blk.{l}.attn_output.weight", Dim::Hidden, Dim::QDim, false},
    {Role::OutputBias, Scope::Layer, When::OBias, "model.layers.{l}.self_attn.o_proj.bias", "blk.{l}.attn_output.bias", Dim::Hidden, Dim::None, false},
    {Role::FfnNorm, Scope::Layer, When::Always, "model.layers.{l}.post_attention_layernorm.weight", "blk.{l}.ffn_norm.weight", Dim::Hidden, Dim::None, false},
    {Role::Router, Scope::Layer, When::Sparse, "model.layers.{l}.mlp.gate.weight", "blk.{l}.ffn_gate_inp.weight", Dim::Experts, Dim::Hidden, false},
    {Role::ExpertGate, Scope::Expert, When::Sparse, "model.layers.{l}.mlp.experts.{e}.gate_proj.weight", "blk.{l}.ffn_gate_exps.weight", Dim::ExpertFfn, Dim::Hidden, false},
    {Role::ExpertUp, Scope::Expert, When::Sparse, "model.layers.{l}.mlp.experts.{e}.up_proj.weight", "blk.{l}.ffn_up_exps.weight", Dim::ExpertFfn, Dim::Hidden, false},
    {Role::ExpertDown, Scope::Expert, When::Sparse, "model.layers.{l}.mlp.experts.{e}.down_proj.weight", "blk.{l}.ffn_down_exps.weight", Dim::Hidden, Dim::ExpertFfn, false},
    {Role::Gate, Scope::Layer, When::Dense, "model.layers.{l}.mlp.gate_proj.weight", "blk.{l}.ffn_gate.weight", Dim::Ffn, Dim::Hidden, false},
    {Role::Up, Scope::Layer, When::Dense, "model.layers.{l}.mlp.up_proj.weight", "blk.{l}.ffn_up.weight", Dim::Ffn, Dim::Hidden, false},
    {Role::Down, Scope::Layer, When::Dense, "model.layers.{l}.mlp.down_proj.weight", "blk.{l}.ffn_down.weight", Dim::Hidden, Dim::Ffn, false},
    {Role::FinalNorm, Scope::Model, When::Always, "model.norm.weight", "output_norm.weight", Dim::Hidden, Dim::None, false},
    {Role::Head, Scope::Model, When::Untied, "lm_head.weight", "output.weight", Dim::Vocab, Dim::Hidden, false},
};

// DeepSeek-V2/V3: multi-head latent attention, dense first layers, routed experts beside shared
// ones. Query/key rows need no reordering: llama.cpp's deepseek2 rotates adjacent pairs, which is
// what HF's deepseek code does after its own de-interleave. kv_b_proj has no single GGUF tensor:
// the exporter splits it into attn_k_b / attn_v_b (the name here is llama.cpp's legacy unsplit one).
const std::vector<TensorDef> kDeepseek = {
    {Role::Embedding, Scope::Model, When::Always, "model.embed_tokens.weight", "token_embd.weight", Dim::Vocab, Dim::Hidden, false},
    {Role::AttnNorm, Scope::Layer, When::Always, "model.layers.{l}.input_layernorm.weight", "blk.{l}.attn_norm.weight", Dim::Hidden, Dim::None, false},
    {Role::QueryA, Scope::Layer, When::QLora, "model.layers.{l}.self_attn.q_a_proj.weight", "blk.{l}.attn_q_a.weight", Dim::QLora, Dim::Hidden, false},
    {Role::QANorm, Scope::Layer, When::QLora, "model.layers.{l}.self_attn.q_a_layernorm.weight", "blk.{l}.attn_q_a_norm.weight", Dim::QLora, Dim::None, false},
    {Role::QueryB, Scope::Layer, When::QLora, "model.layers.{l}.self_attn.q_b_proj.weight", "blk.{l}.attn_q_b.weight", Dim::QDim, Dim::QLora, false},
    {Role::Query, Scope::Layer, When::NoQLora, "model.layers.{l}.self_attn.q_proj.weight", "blk.{l}.attn_q.weight", Dim::QDim, Dim::Hidden, false},
    {Role::KvA, Scope::Layer, When::Always, "model.layers.{l}.self_attn.kv_a_proj_with_mqa.weight", "blk.{l}.attn_kv_a_mqa.weight", Dim::KvA, Dim::Hidden, false},
    {Role::KvANorm, Scope::Layer, When::Always, "model.layers.{l}.self_attn.kv_a_layernorm.weight", "blk.{l}.attn_kv_a_norm.weight", Dim::KvLora, Dim::None, false},
    {Role::KvB, Scope::Layer, When::Always, "model.layers.{l}.self_attn.kv_b_proj.weight", "blk.{l}.attn_kv_b.weight", Dim::KvB, Dim::KvLora, false},
    {Role::Output, Scope::Layer, When::Always, "model.layers.{l}.self_attn.o_proj.weight", "blk.{l}.attn_output.weight", Dim::Hidden, Dim::VDim, false},
    {Role::FfnNorm, Scope::Layer, When::Always, "model.layers.{l}.post_attention_layernorm.weight", "blk.{l}.ffn_norm.weight", Dim::Hidden, Dim::None, false},
    {Role::Router, Scope::Layer, When::Sparse, "model.layers.{l}.mlp.gate.weight", "blk.{l}.ffn_gate_inp.weight", Dim::Experts, Dim::Hidden, false},
    {Role::RouterBias, Scope::Layer, When::SparseBias, "model.layers.{l}.mlp.gate.e_score_correction_bias", "blk.{l}.exp_probs_b.bias", Dim::Experts, Dim::None, false},
    {Role::ExpertGate, Scope::Expert, When::Sparse, "model.layers.{l}.mlp.experts.{e}.gate_proj.weight", "blk.{l}.ffn_gate_exps.weight", Dim::ExpertFfn, Dim::Hidden, false},
    {Role::ExpertUp, Scope::Expert, When::Sparse, "model.layers.{l}.mlp.experts.{e}.up_proj.weight", "blk.{l}.ffn_up_exps.weight", Dim::ExpertFfn, Dim::Hidden, false},
    {Role::ExpertDown, Scope::Expert, When::Sparse, "model.layers.{l}.mlp.experts.{e}.down_proj.weight", "blk.{l}.ffn_down_exps.weight", Dim::Hidden, Dim::ExpertFfn, false},
    {Role::SharedGate, Scope::Layer, When::Shared, "model.layers.{l}.mlp.shared_experts.gate_proj.weight", "blk.{l}.ffn_gate_shexp.weight", Dim::SharedFfn, Dim::Hidden, false},
    {Role::SharedUp, Scope::Layer, When::Shared, "model.layers.{l}.mlp.shared_experts.up_proj.weight", "blk.{l}.ffn_up_shexp.weight", Dim::SharedFfn, Dim::Hidden, false},
    {Role::SharedDown, Scope::Layer, When::Shared, "model.layers.{l}.mlp.shared_experts.down_proj.weight", "blk.{l}.ffn_down_shexp.weight", Dim::Hidden, Dim::SharedFfn, false},
    {Role::Gate, Scope::Layer, When::Dense, "model.layers.{l}.mlp.gate_proj.weight", "blk.{l}.ffn_gate.weight", Dim::Ffn, Dim::Hidden, false},
    {Role::Up, Scope::Layer, When::Dense, "model.layers.{l}.mlp.up_proj.weight", "blk.{l}.ffn_up.weight", Dim::Ffn, Dim::Hidden, false},
    {Role::Down, Scope::Layer, When::Dense, "model.layers.{l}.mlp.down_proj.weight", "blk.{l}.ffn_down.weight", Dim::Hidden, Dim::Ffn, false},
    {Role::FinalNorm, Scope::Model, When::Always, "model.norm.weight", "output_norm.weight", Dim::Hidden, Dim::None, false},
    {Role::Head, Scope::Model, When::Untied, "lm_head.weight", "output.weight", Dim::Vocab, Dim::Hidden, false},
};

// Replaces "{l}" and "{e}" in a pattern.
std::string fill(const char* pattern, int64_t layer, int64_t expert) {
  std::string out;
  for (const char* p = pattern; *p; ++p) {
    if (p[0] == '{' && (p[1] == 'l' || p[1] == 'e') && p[2] == '}') {
      const int64_t v = p[1] == 'l' ? layer : expert;
      if (v < 0) throw Error("tensor layout", std::string("pattern '") + pattern + "' needs a " +
                                                  (p[1] == 'l' ? "layer" : "expert") + " index");
      out += std::to_string(v);
      p += 2;
    } else {
      out += *p;
    }
  }
  return out;
}

}  // namespace

const char* role_name(Role r) {
  switch (r) {
    case Role::Embedding: return "embedding";
    case Role::AttnNorm: return "attn_norm";
    case Role::Query: return "query";
    case Role::Key: return "key";
    case Role::Value: return "value";
    case Role::QueryBias: return "query_bias";
    case Role::KeyBias: return "key_bias";
    case Role::ValueBias: return "value_bias";
    case Role::QNorm: return "q_norm";
    case Role::KNorm: return "k_norm";
    case Role::Output: return "output";
    case Role::OutputBias: return "output_bias";
    case Role::FfnNorm: return "ffn_norm";
    case Role::Router: return "router";
    case Role::ExpertGate: return "expert_gate";
    case Role::ExpertUp: return "expert_up";
    case Role::ExpertDown: return "expert_down";
    case Role::Gate: return "gate";
    case Role::Up: return "up";
    case Role::Down: return "down";
    case Role::QueryA: return "query_a";
    case Role::QANorm: return "q_a_norm";
    case Role::QueryB: return "query_b";
    case Role::KvA: return "kv_a";
    case Role::KvANorm: return "kv_a_norm";
    case Role::KvB: return "kv_b";
    case Role::RouterBias: return "router_bias";
    case Role::SharedGate: return "shared_gate";
    case Role::SharedUp: return "shared_up";
    case Role::SharedDown: return "shared_down";
    case Role::FinalNorm: return "final_norm";
    case Role::Head: return "head";
  }
  return "?";
}

const std::vector<TensorDef>& table(Family f) {
  switch (f) {
    case Family::Llama:
    case Family::Mistral:
    case Family::Qwen2:
    case Family::Qwen3:
    case Family::Qwen3Moe: return kDecoder;
    case Family::DeepseekV2:
    case Family::DeepseekV3: return kDeepseek;
  }
  throw Error("tensor layout", "no table for family " + family_name(f));
}

const TensorDef& def(Family f, Role r) {
  for (const auto& t : table(f))
    if (t.role == r) return t;
  throw Error("tensor layout", std::string("family ") + family_name(f) + " has no '" + role_name(r) + "' tensor");
}

Dims Dims::of(const ModelConfig& c) {
  Dims d;
  d.vocab = c.vocab_size;
  d.hidden = c.hidden_size;
  d.q_dim = c.q_dim();
  d.kv_dim = c.kv_dim();
  d.head_dim = c.head_dim;
  d.ffn = c.intermediate_size;
  d.expert_ffn = c.moe_intermediate_size;
  d.experts = c.num_experts;
  d.q_lora = c.q_lora_rank;
  d.kv_lora = c.kv_lora_rank;
  d.kv_a = c.kv_lora_rank + c.qk_rope_head_dim;
  d.kv_b = c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim);
  d.v_dim = c.v_dim();
  d.shared_ffn = c.moe_intermediate_size * c.n_shared_experts;
  return d;
}

int64_t Dims::operator[](Dim x) const {
  switch (x) {
    case Dim::None: return 0;
    case Dim::Vocab: return vocab;
    case Dim::Hidden: return hidden;
    case Dim::QDim: return q_dim;
    case Dim::KvDim: return kv_dim;
    case Dim::HeadDim: return head_dim;
    case Dim::Ffn: return ffn;
    case Dim::ExpertFfn: return expert_ffn;
    case Dim::Experts: return experts;
    case Dim::QLora: return q_lora;
    case Dim::KvLora: return kv_lora;
    case Dim::KvA: return kv_a;
    case Dim::KvB: return kv_b;
    case Dim::VDim: return v_dim;
    case Dim::SharedFfn: return shared_ffn;
  }
  return 0;
}

std::string hf_name(const TensorDef& t, int64_t layer, int64_t expert) { return fill(t.hf, layer, expert); }
std::string gguf_name(const TensorDef& t, int64_t layer) { return fill(t.gguf, layer, -1); }
std::string hf_name(const ModelConfig& c, Role r, int64_t layer, int64_t expert) {
  return hf_name(def(c.family, r), layer, expert);
}

bool present(const TensorDef& t, const ModelConfig& c, int64_t layer) {
  switch (t.when) {
    case When::Always: return true;
    case When::AttnBias: return c.attention_bias;
    case When::OBias: return c.o_bias();
    case When::QkNorm: return c.qk_norm;
    case When::Dense: return !c.is_moe_layer(layer);
    case When::Sparse: return c.is_moe_layer(layer);
    case When::Untied: return !c.tie_word_embeddings;
    case When::QLora: return c.q_lora_rank > 0;
    case When::NoQLora: return c.q_lora_rank == 0;
    case When::SparseBias: return c.router_bias() && c.is_moe_layer(layer);
    case When::Shared: return c.n_shared_experts > 0 && c.is_moe_layer(layer);
  }
  return false;
}

std::vector<int64_t> shape(const TensorDef& t, const Dims& d) {
  if (t.cols == Dim::None) return {d[t.rows]};
  return {d[t.rows], d[t.cols]};
}

std::vector<TensorRef> layer_tensors(const ModelConfig& c, const Dims& d, int64_t layer) {
  std::vector<TensorRef> v;
  const auto& tab = table(c.family);
  for (size_t i = 0; i < tab.size(); ++i) {
    const TensorDef& t = tab[i];
    if (t.scope == Scope::Model || !present(t, c, layer)) continue;
    if (t.scope == Scope::Layer) {
      v.push_back({&t, layer, -1, hf_name(t, layer), shape(t, d)});
      continue;
    }
    // A run of expert rows: expert-major, all of expert e's projections before expert e + 1's.
    size_t j = i;
    while (j < tab.size() && tab[j].scope == Scope::Expert) ++j;
    for (int64_t e = 0; e < d.experts; ++e)
      for (size_t k = i; k < j; ++k)
        if (present(tab[k], c, layer)) v.push_back({&tab[k], layer, e, hf_name(tab[k], layer, e), shape(tab[k], d)});
    i = j - 1;
  }
  return v;
}

std::vector<TensorRef> tensors(const ModelConfig& c, const Dims& d, bool include_tied_head) {
  std::vector<TensorRef> v;
  const auto& tab = table(c.family);
  auto model_rows = [&](bool after_layers) {
    for (const TensorDef& t : tab) {
      if (t.scope != Scope::Model) continue;
      if ((t.role != Role::Embedding) != after_layers) continue;
      if (!present(t, c, -1) && !(include_tied_head && t.role == Role::Head)) continue;
      v.push_back({&t, -1, -1, hf_name(t), shape(t, d)});
    }
  };
  model_rows(false);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (auto& r : layer_tensors(c, d, l)) v.push_back(std::move(r));
  model_rows(true);
  return v;
}

}  // namespace aloepri::layout

namespace aloepri {

// Declared with ModelConfig (formats) so every consumer of a config can ask for it; counted from
// the layout, which lives above formats.
int64_t ModelConfig::parameter_count() const {
  int64_t n = 0;
  for (const auto& t : layout::tensors(*this, layout::Dims::of(*this))) {
    int64_t k = 1;
    for (auto d : t.shape)
      if (__builtin_mul_overflow(k, d, &k)) throw Error("config.json", "parameter count overflows");
    if (__builtin_add_overflow(n, k, &n)) throw Error("config.json", "parameter count overflows");
  }
  return n;
}

}  // namespace aloepri
