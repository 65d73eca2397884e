// The tensor layout table (model/layout.h): names, shapes, conditions and order, checked against
// names spelled out here from the Hugging Face and llama.cpp conventions (not from the table).
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "aloepri/core/error.h"
#include "aloepri/model/layout.h"

using namespace aloepri;
namespace ly = aloepri::layout;

namespace {

ModelConfig tiny(Family f) {
  ModelConfig c;
  c.family = f;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 96;
  c.vocab_size = 100;
  c.attention_bias = f == Family::Qwen2;
  c.qk_norm = f == Family::Qwen3 || f == Family::Qwen3Moe;
  if (f == Family::Qwen3Moe) {
    c.num_experts = 3;
    c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 32;
    c.mlp_only_layers = {0};  // layer 0 dense, layer 1 sparse
  }
  return c;
}

std::vector<std::string> names(const std::vector<ly::TensorRef>& v) {
  std::vector<std::string> out;
  for (auto& t : v) out.push_back(t.name);
  return out;
}

}  // namespace

TEST(Layout, Qwen2LayerHasBiasesInComputeOrder) {
  const ModelConfig c = tiny(Family::Qwen2);
  const auto v = ly::layer_tensors(c, ly::Dims::of(c), 1);
  const std::vector<std::string> want = {
      "model.layers.1.input_layernorm.weight",  "model.layers.1.self_attn.q_proj.weight",
      "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
      "model.layers.1.self_attn.q_proj.bias",   "model.layers.1.self_attn.k_proj.bias",
      "model.layers.1.self_attn.v_proj.bias",   "model.layers.1.self_attn.o_proj.weight",
      "model.layers.1.post_attention_layernorm.weight", "model.layers.1.mlp.gate_proj.weight",
      "model.layers.1.mlp.up_proj.weight",      "model.layers.1.mlp.down_proj.weight"};
  EXPECT_EQ(names(v), want);
  // Shapes, HF layout (out x in): q [heads * head_dim, d], k/v [kv_heads * head_dim, d], o [d, q].
  EXPECT_EQ(v[1].shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(v[2].shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(v[5].shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(v[7].shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(v[11].shape, (std::vector<int64_t>{64, 96}));
}

TEST(Layout, LlamaWithAttentionBiasHasAnOutputBiasQwen2DoesNot) {
  ModelConfig c = tiny(Family::Llama);
  c.attention_bias = true;
  auto n = names(ly::layer_tensors(c, ly::Dims::of(c), 0));
  EXPECT_NE(std::find(n.begin(), n.end(), "model.layers.0.self_attn.o_proj.bias"), n.end());
  const ModelConfig q = tiny(Family::Qwen2);
  n = names(ly::layer_tensors(q, ly::Dims::of(q), 0));
  EXPECT_EQ(std::find(n.begin(), n.end(), "model.layers.0.self_attn.o_proj.bias"), n.end());
}

TEST(Layout, MoeLayersListRouterThenExpertsExpertMajorAndDenseLayersTheirMlp) {
  const ModelConfig c = tiny(Family::Qwen3Moe);
  const auto dense = names(ly::layer_tensors(c, ly::Dims::of(c), 0));
  EXPECT_EQ(dense.back(), "model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(std::count_if(dense.begin(), dense.end(), [](auto& s) { return s.find("experts") != std::string::npos; }), 0);
  const auto v = ly::layer_tensors(c, ly::Dims::of(c), 1);
  const auto n = names(v);
  // q_norm / k_norm come right after v (computed before o_proj).
  EXPECT_EQ(n[4], "model.layers.1.self_attn.q_norm.weight");
  EXPECT_EQ(n[5], "model.layers.1.self_attn.k_norm.weight");
  EXPECT_EQ(n[6], "model.layers.1.self_attn.o_proj.weight");
  EXPECT_EQ(n[8], "model.layers.1.mlp.gate.weight");
  EXPECT_EQ(n[9], "model.layers.1.mlp.experts.0.gate_proj.weight");
  EXPECT_EQ(n[10], "model.layers.1.mlp.experts.0.up_proj.weight");
  EXPECT_EQ(n[11], "model.layers.1.mlp.experts.0.down_proj.weight");
  EXPECT_EQ(n[12], "model.layers.1.mlp.experts.1.gate_proj.weight");
  EXPECT_EQ(n.back(), "model.layers.1.mlp.experts.2.down_proj.weight");
  EXPECT_EQ(n.size(), 9u + 3u * 3u);
  EXPECT_EQ(v[8].shape, (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(v.back().shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(v.back().expert, 2);
}

TEST(Layout, WholeModelOrderAndTiedHead) {
  ModelConfig c = tiny(Family::Llama);
  c.tie_word_embeddings = true;
  auto v = ly::tensors(c, ly::Dims::of(c));
  EXPECT_EQ(v.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(v.back().name, "model.norm.weight");  // tied: no lm_head in the checkpoint
  EXPECT_EQ(v.size(), 1u + 2u * 9u + 1u);
  v = ly::tensors(c, ly::Dims::of(c), /*include_tied_head=*/true);
  EXPECT_EQ(v.back().name, "lm_head.weight");
  // An obfuscated model's sizes replace the config's: hidden d', vocabulary n'.
  ly::Dims d = ly::Dims::of(c);
  d.hidden = 80;
  d.vocab = 130;
  v = ly::tensors(c, d, true);
  EXPECT_EQ(v.front().shape, (std::vector<int64_t>{130, 80}));
  EXPECT_EQ(v[2].shape, (std::vector<int64_t>{64, 80}));  // q reads the widened residual
}

TEST(Layout, GgufNamesFollowLlamaCpp) {
  const ModelConfig c = tiny(Family::Qwen3Moe);
  std::set<std::string> g;
  for (const auto& t : ly::table(c.family)) g.insert(ly::gguf_name(t, 3));
  for (const char* want : {"token_embd.weight", "blk.3.attn_norm.weight", "blk.3.attn_q.weight", "blk.3.attn_k.weight",
                           "blk.3.attn_v.weight", "blk.3.attn_output.weight", "blk.3.attn_q_norm.weight",
                           "blk.3.attn_k_norm.weight", "blk.3.ffn_norm.weight", "blk.3.ffn_gate_inp.weight",
                           "blk.3.ffn_gate_exps.weight", "blk.3.ffn_up_exps.weight", "blk.3.ffn_down_exps.weight",
                           "blk.3.ffn_gate.weight", "blk.3.ffn_up.weight", "blk.3.ffn_down.weight",
                           "output_norm.weight", "output.weight", "blk.3.attn_q.bias", "blk.3.attn_output.bias"})
    EXPECT_TRUE(g.count(want)) << want;
  // Only q and k (and their biases) carry the RoPE row order llama.cpp's llama arch interleaves.
  for (const auto& t : ly::table(c.family)) {
    const bool rope = t.role == ly::Role::Query || t.role == ly::Role::Key || t.role == ly::Role::QueryBias ||
                      t.role == ly::Role::KeyBias;
    EXPECT_EQ(t.rope_rows, rope) << ly::role_name(t.role);
  }
}

TEST(Layout, NamesByRoleAndPatternErrors) {
  const ModelConfig c = tiny(Family::Qwen3Moe);
  EXPECT_EQ(ly::hf_name(c, ly::Role::ExpertUp, 1, 2), "model.layers.1.mlp.experts.2.up_proj.weight");
  EXPECT_EQ(ly::hf_name(c, ly::Role::Head), "lm_head.weight");
  // A layer row without its layer, an expert row without its expert: an error naming the pattern.
  EXPECT_THROW(ly::hf_name(c, ly::Role::Query), Error);
  try {
    ly::hf_name(c, ly::Role::ExpertGate, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert"), std::string::npos) << e.what();
  }
}

TEST(Layout, ParameterCountIsTheSumOfTheLayoutsShapes) {
  const ModelConfig c = tiny(Family::Qwen3Moe);
  // embed 100x64, head 100x64, final norm 64; per layer: 2 norms, q 64x64, k, v 32x64, o 64x64,
  // q/k norms 16 each; layer 0 dense MLP 3 x 96x64; layer 1 router 3x64 + 3 experts x 3 x 32x64.
  const int64_t attn = 2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 2 * 16;
  const int64_t want = 2 * 100 * 64 + 64 + 2 * attn + 3 * 96 * 64 + 3 * 64 + 3 * 3 * 32 * 64;
  EXPECT_EQ(c.parameter_count(), want);
}
