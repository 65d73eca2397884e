// HF checkpoint -> ModelWeights, every tensor as stored (nn.Linear weight = out x in), found by
// role in the family's layout table. Kept apart from forward.cpp so code that builds ModelWeights
// in memory does not need the formats module.
#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/model/model.h"
#include "aloepri/model/layout.h"

namespace aloepri {

ModelWeights ModelWeights::load(const HFModel& m) {
  ModelWeights w;
  w.config = m.config();
  const ModelConfig& c = w.config;
  auto get = [&](const std::string& name) { return m.tensor_f32(name); };
  auto opt = [&](const std::string& name) { return m.weights().has(name) ? get(name) : Tensor(); };

  using layout::Role;
  w.embed = get(layout::hf_name(c, Role::Embedding));
  w.final_norm = get(layout::hf_name(c, Role::FinalNorm));
  w.head = m.lm_head_f32();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto n = [&](Role r) { return layout::hf_name(c, r, i); };
    LayerWeights L;
    L.attn_norm = get(n(Role::AttnNorm));
    L.ffn_norm = get(n(Role::FfnNorm));
    if (c.mla()) {
      if (c.q_lora_rank > 0) {
        L.wq_a = get(n(Role::QueryA));
        L.q_a_norm = get(n(Role::QANorm));
        L.wq_b = get(n(Role::QueryB));
      } else {
        L.wq = get(n(Role::Query));
      }
      L.wkv_a = get(n(Role::KvA));
      L.kv_a_norm = get(n(Role::KvANorm));
      L.wkv_b = get(n(Role::KvB));
    } else {
      L.wq = get(n(Role::Query));
      L.wk = get(n(Role::Key));
      L.wv = get(n(Role::Value));
    }
    L.wo = get(n(Role::Output));
    // Biases: whatever the checkpoint holds (qwen2 always has q/k/v; llama with attention_bias
    // also has o_proj's).
    if (!c.mla()) {
      L.bq = opt(n(Role::QueryBias));
      L.bk = opt(n(Role::KeyBias));
      L.bv = opt(n(Role::ValueBias));
      L.bo = opt(n(Role::OutputBias));
    }
    if (c.qk_norm) {
      L.q_norm = get(n(Role::QNorm));
      L.k_norm = get(n(Role::KNorm));
    }
    if (c.is_moe_layer(i)) {
      L.router = get(n(Role::Router));
      auto x = [&](Role r, int64_t e) { return get(layout::hf_name(c, r, i, e)); };
      for (int64_t e = 0; e < c.num_experts; ++e)
        L.experts.push_back({x(Role::ExpertGate, e), x(Role::ExpertUp, e), x(Role::ExpertDown, e)});
      if (c.router_bias()) L.router_bias = get(n(Role::RouterBias));
      if (c.mla() && c.n_shared_experts > 0)
        L.shared = {get(n(Role::SharedGate)), get(n(Role::SharedUp)), get(n(Role::SharedDown))};
    } else {
      L.w_gate = get(n(Role::Gate));
      L.w_up = get(n(Role::Up));
      L.w_down = get(n(Role::Down));
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
