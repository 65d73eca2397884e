// HF checkpoint -> ModelWeights, every tensor as stored (nn.Linear weight = out x in). Kept apart
// from forward.cpp so code that builds ModelWeights in memory does not need the formats module.
#include <filesystem>

#include "aloepri/error.h"
#include "aloepri/forward.h"
#include "aloepri/model.h"

namespace aloepri {

ModelWeights ModelWeights::load(const HFModel& m) {
  ModelWeights w;
  w.config = m.config();
  const ModelConfig& c = w.config;
  auto get = [&](const std::string& name) { return m.tensor_f32(name); };
  auto opt = [&](const std::string& name) { return m.weights().has(name) ? get(name) : Tensor(); };

  w.embed = get(tensor_names::embed());
  w.final_norm = get(tensor_names::final_norm());
  w.head = m.lm_head_f32();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto n = [&](const char* suffix) { return tensor_names::layer(i, suffix); };
    LayerWeights L;
    L.attn_norm = get(n("input_layernorm.weight"));
    L.ffn_norm = get(n("post_attention_layernorm.weight"));
    L.wq = get(n("self_attn.q_proj.weight"));
    L.wk = get(n("self_attn.k_proj.weight"));
    L.wv = get(n("self_attn.v_proj.weight"));
    L.wo = get(n("self_attn.o_proj.weight"));
    // Biases: whatever the checkpoint holds (qwen2 always has q/k/v; llama with attention_bias
    // also has o_proj's).
    L.bq = opt(n("self_attn.q_proj.bias"));
    L.bk = opt(n("self_attn.k_proj.bias"));
    L.bv = opt(n("self_attn.v_proj.bias"));
    L.bo = opt(n("self_attn.o_proj.bias"));
    if (c.qk_norm) {
      L.q_norm = get(n("self_attn.q_norm.weight"));
      L.k_norm = get(n("self_attn.k_norm.weight"));
    }
    if (c.is_moe_layer(i)) {
      namespace tn = tensor_names;
      L.router = get(tn::router(i));
      for (int64_t e = 0; e < c.num_experts; ++e)
        L.experts.push_back({get(tn::expert(i, e, tn::ExpertProj::Gate)), get(tn::expert(i, e, tn::ExpertProj::Up)),
                             get(tn::expert(i, e, tn::ExpertProj::Down))});
    } else {
      L.w_gate = get(n("mlp.gate_proj.weight"));
      L.w_up = get(n("mlp.up_proj.weight"));
      L.w_down = get(n("mlp.down_proj.weight"));
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
