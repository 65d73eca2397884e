// HF checkpoint -> ModelWeights: nn.Linear stores (out x in); the forward uses row vectors
// (y = x W, W is in x out), so every projection is transposed on load. Kept apart from
// forward.cpp so code that builds ModelWeights in memory does not need the formats module.
#include <filesystem>

#include "aloepri/error.h"
#include "aloepri/forward.h"
#include "aloepri/model.h"
#include "aloepri/model/layout.h"

namespace aloepri {

namespace {

// HF (out x in) -> (in x out).
Tensor transposed(const Tensor& t, const std::string& name) {
  require(t.shape.size() == 2, "tensor '" + name + "'", "expected a matrix, got shape " + t.shape_str());
  const int64_t r = t.shape[0], c = t.shape[1];
  Tensor out({c, r});
  // Blocked so neither side strides through memory one element per cache line.
  const int64_t B = 64;
  for (int64_t i0 = 0; i0 < r; i0 += B)
    for (int64_t j0 = 0; j0 < c; j0 += B)
      for (int64_t i = i0; i < std::min(r, i0 + B); ++i)
        for (int64_t j = j0; j < std::min(c, j0 + B); ++j) out.data[j * r + i] = t.data[i * c + j];
  return out;
}

}  // namespace

ModelWeights ModelWeights::load(const HFModel& m) {
  ModelWeights w;
  w.config = m.config();
  const ModelConfig& c = w.config;
  auto get = [&](const std::string& name) { return m.tensor_f32(name); };
  auto get_t = [&](const std::string& name) { return transposed(m.tensor_f32(name), name); };
  auto opt = [&](const std::string& name) { return m.weights().has(name) ? get(name) : Tensor(); };

  using layout::Role;
  w.embed = get(layout::hf_name(c, Role::Embedding));
  w.final_norm = get(layout::hf_name(c, Role::FinalNorm));
  w.head = transposed(m.lm_head_f32(), layout::hf_name(c, c.tie_word_embeddings ? Role::Embedding : Role::Head));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto n = [&](Role r) { return layout::hf_name(c, r, i); };
    LayerWeights L;
    L.attn_norm = get(n(Role::AttnNorm));
    L.ffn_norm = get(n(Role::FfnNorm));
    L.wq = get_t(n(Role::Query));
    L.wk = get_t(n(Role::Key));
    L.wv = get_t(n(Role::Value));
    L.wo = get_t(n(Role::Output));
    // Biases: whatever the checkpoint holds (qwen2 always has q/k/v; llama with attention_bias
    // also has o_proj's).
    L.bq = opt(n(Role::QueryBias));
    L.bk = opt(n(Role::KeyBias));
    L.bv = opt(n(Role::ValueBias));
    L.bo = opt(n(Role::OutputBias));
    if (c.qk_norm) {
      L.q_norm = get(n(Role::QNorm));
      L.k_norm = get(n(Role::KNorm));
    }
    if (c.is_moe_layer(i)) {
      L.router = get_t(n(Role::Router));
      auto x = [&](Role r, int64_t e) { return get_t(layout::hf_name(c, r, i, e)); };
      for (int64_t e = 0; e < c.num_experts; ++e)
        L.experts.push_back({x(Role::ExpertGate, e), x(Role::ExpertUp, e), x(Role::ExpertDown, e)});
    } else {
      L.w_gate = get_t(n(Role::Gate));
      L.w_up = get_t(n(Role::Up));
      L.w_down = get_t(n(Role::Down));
    }
    w.layers.push_back(std::move(L));
  }
  return w;
}

ReferenceModel ReferenceModel::load(const std::string& model_dir) {
  HFModel m(model_dir);
  return ReferenceModel(ModelWeights::load(m));
}

}  // namespace aloepri
