// The tensor layout of each decoder family, as data: one table row per tensor role with its HF
// name, its llama.cpp GGUF name, its shape rule and when it exists (in the spirit of llama.cpp's
// LLM_TN / llama-arch). Every consumer (the checkpoint check, the synthetic writer, the engine's
// loader, the obfuscator's output plan, the GGUF exporter) walks this table instead of spelling
// names, so a new architecture is a new table plus the transforms that are new for it.
//
// Shapes are HF layout (nn.Linear weight is out x in). Names are patterns: "{l}" is the layer,
// "{e}" the expert. Experts are one row per projection; HF has one tensor per expert, GGUF one
// stacked tensor per projection (ne = {cols, rows, experts}).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/formats/hf_config.h"

namespace aloepri::layout {

enum class Role : uint8_t {
  Embedding,  // model    [vocab, hidden]
  AttnNorm,   // layer    [hidden]
  Query,      // layer    [q_dim, hidden]
  Key,        // layer    [kv_dim, hidden]
  Value,      // layer    [kv_dim, hidden]
  QueryBias,  // layer    [q_dim]
  KeyBias,    // layer    [kv_dim]
  ValueBias,  // layer    [kv_dim]
  QNorm,      // layer    [head_dim]   (qwen3: one RMSNorm gain over head_dim, all heads)
  KNorm,      // layer    [head_dim]
  Output,     // layer    [hidden, q_dim]
  OutputBias, // layer    [hidden]
  FfnNorm,    // layer    [hidden]
  Router,     // layer    [experts, hidden]
  ExpertGate, // expert   [expert_ffn, hidden]
  ExpertUp,   // expert   [expert_ffn, hidden]
  ExpertDown, // expert   [hidden, expert_ffn]
  Gate,       // layer    [ffn, hidden]
  Up,         // layer    [ffn, hidden]
  Down,       // layer    [hidden, ffn]
  // DeepSeek multi-head latent attention (heads H, nope + rope = head_dim, v = v_head_dim).
  QueryA,     // layer    [q_lora, hidden]
  QANorm,     // layer    [q_lora]
  QueryB,     // layer    [H * head_dim, q_lora]   (Query [H * head_dim, hidden] without a q latent)
  KvA,        // layer    [kv_lora + rope, hidden] (the latent, then the shared rope key)
  KvANorm,    // layer    [kv_lora]
  KvB,        // layer    [H * (nope + v), kv_lora] (per head: nope key rows, then value rows)
  RouterBias, // layer    [experts]  (DeepSeek-V3 e_score_correction_bias: chooses, does not weigh)
  SharedGate, // layer    [shared_ffn, hidden]
  SharedUp,   // layer    [shared_ffn, hidden]
  SharedDown, // layer    [hidden, shared_ffn]
  FinalNorm,  // model    [hidden]
  Head,       // model    [vocab, hidden]  (absent from an HF checkpoint with a tied head)
};
const char* role_name(Role r);  // "query", "expert_gate", ...

// The sizes a shape rule is made of. Obfuscated models change hidden (d') and vocab (n').
enum class Dim : uint8_t {
  None, Vocab, Hidden, QDim, KvDim, HeadDim, Ffn, ExpertFfn, Experts,
  QLora, KvLora, KvA, KvB, VDim, SharedFfn,  // MLA: kv_lora + rope, H * (nope + v), H * v; shared experts' width
};

// When a row exists for a given config and layer.
enum class When : uint8_t {
  Always,
  AttnBias,   // config.attention_bias (q/k/v biases)
  OBias,      // config.o_bias()
  QkNorm,     // config.qk_norm
  Dense,      // the layer's FFN is a dense MLP
  Sparse,     // the layer's FFN is a mixture of experts
  Untied,     // the head is its own tensor (not tie_word_embeddings)
  QLora,      // config.q_lora_rank > 0 (queries through a latent)
  NoQLora,    // config.q_lora_rank == 0 (q_proj from the residual)
  SparseBias, // a sparse layer of a router_bias() config
  Shared,     // a sparse layer of a config with shared experts
};

enum class Scope : uint8_t { Model, Layer, Expert };

// One row of a family's table.
struct TensorDef {
  Role role;
  Scope scope;
  When when;
  const char* hf;     // HF name pattern
  const char* gguf;   // llama.cpp GGUF name pattern (experts: the stacked tensor)
  Dim rows, cols;     // cols None: a vector of `rows` elements
  bool rope_rows;     // rows are in HF rotate_half order; llama.cpp's llama arch wants them interleaved
};

// The rows of a family's table in canonical order: embedding; per layer the attention block in
// the order the obfuscator computes it, then the FFN block; final norm, head. Files the
// obfuscator writes follow this order.
const std::vector<TensorDef>& table(Family f);
const TensorDef& def(Family f, Role r);  // throws if the family has no such role

// The sizes a shape rule refers to; from a config, then overridable (an obfuscated model's d', n').
struct Dims {
  int64_t vocab = 0, hidden = 0, q_dim = 0, kv_dim = 0, head_dim = 0, ffn = 0, expert_ffn = 0, experts = 0;
  int64_t q_lora = 0, kv_lora = 0, kv_a = 0, kv_b = 0, v_dim = 0, shared_ffn = 0;
  static Dims of(const ModelConfig& c);
  int64_t operator[](Dim d) const;
};

// A row's name with the layer (and expert) filled in.
std::string hf_name(const TensorDef& t, int64_t layer = -1, int64_t expert = -1);
std::string gguf_name(const TensorDef& t, int64_t layer = -1);
// By role, for code that wants one tensor: hf_name(def(c.family, r), layer, expert).
std::string hf_name(const ModelConfig& c, Role r, int64_t layer = -1, int64_t expert = -1);

// Whether row t exists in layer `layer` (-1 for model-scope rows) of this config.
bool present(const TensorDef& t, const ModelConfig& c, int64_t layer);

// Shape of a row (HF layout): {rows, cols} or {rows}.
std::vector<int64_t> shape(const TensorDef& t, const Dims& d);

// One concrete tensor: a table row instantiated for a layer and expert.
struct TensorRef {
  const TensorDef* def;
  int64_t layer = -1;   // -1: model scope
  int64_t expert = -1;  // -1: not an expert tensor
  std::string name;     // HF name
  std::vector<int64_t> shape;
};

// Every tensor of a checkpoint of this config, in canonical order (experts expert-major: all of
// expert 0's projections, then expert 1's). include_tied_head: list the head even when tied
// (an obfuscated model's head always differs from its embedding).
std::vector<TensorRef> tensors(const ModelConfig& c, const Dims& d, bool include_tied_head = false);
// The tensors of one layer, in canonical order.
std::vector<TensorRef> layer_tensors(const ModelConfig& c, const Dims& d, int64_t layer);

// The attention block's tensors that exist in this config, by role, into a layer struct whose
// members are named as the engine's LayerWeights (attn_norm, wq, wk, wv, wo, bq, bk, bv, bo,
// q_norm, k_norm); get(Role) returns one tensor of the struct's type. Shared by the obfuscation
// step (f32 tensors) and the libtorch model (torch tensors).
template <class Layer, class Get>
void load_attention(Layer& L, const ModelConfig& c, Get&& get) {
  L.attn_norm = get(Role::AttnNorm);
  L.wq = get(Role::Query);
  L.wk = get(Role::Key);
  L.wv = get(Role::Value);
  L.wo = get(Role::Output);
  if (c.attention_bias) {
    L.bq = get(Role::QueryBias);
    L.bk = get(Role::KeyBias);
    L.bv = get(Role::ValueBias);
  }
  if (c.qk_norm) {
    L.q_norm = get(Role::QNorm);
    L.k_norm = get(Role::KNorm);
  }
  if (c.o_bias()) L.bo = get(Role::OutputBias);
}

}  // namespace aloepri::layout
