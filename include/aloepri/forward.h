// The reference forward pass: Hugging Face semantics (rotate_half RoPE with the config's
// scaling, GQA, RMSNorm with eps, SiLU-gated MLP, q/k/v biases, tied or untied head), weights
// held in f32 and every dot product accumulated in f64. This is the oracle for every accuracy
// and privacy measurement in the project.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "aloepri/hf_config.h"
#include "aloepri/tensor.h"

namespace aloepri {

class HFModel;

// Weights in the orientation the forward uses (row vectors: y = x W, W is in x out).
struct LayerWeights {
  Tensor attn_norm, ffn_norm;            // [d]
  Tensor wq, wk, wv, wo;                 // [d, m*dh], [d, mkv*dh], [d, mkv*dh], [m*dh, d]
  Tensor bq, bk, bv;                     // empty when absent
  Tensor q_norm, k_norm;                 // qwen3 only, [dh]
  Tensor w_gate, w_up, w_down;           // [d, ff], [d, ff], [ff, d]
};

struct ModelWeights {
  ModelConfig config;
  Tensor embed;       // [n, d]
  Tensor final_norm;  // [d]
  Tensor head;        // [d, n]
  std::vector<LayerWeights> layers;

  static ModelWeights load(const HFModel& m);
};

// Observation hooks for eval/audit: called with (layer index, residual stream after the layer).
using ResidualHook = std::function<void(int64_t layer, const std::vector<double>& residual)>;

class ReferenceModel {
 public:
  explicit ReferenceModel(ModelWeights w);
  static ReferenceModel load(const std::string& model_dir);
  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }

  // Feed one token at the next position (KV cache grows); returns its logits [n].
  std::vector<double> step(int64_t token_id);
  // Feed a sequence; returns logits of every position, row-major [T, n].
  std::vector<double> forward(const std::vector<int64_t>& ids);
  void reset();  // clear the KV cache
  int64_t position() const { return pos_; }
  // Greedy continuation of n tokens after prompt (resets first).
  std::vector<int64_t> greedy(const std::vector<int64_t>& prompt, int64_t n);
  void set_residual_hook(ResidualHook h) { hook_ = std::move(h); }

 private:
  ModelWeights w_;
  std::vector<std::vector<double>> k_cache_, v_cache_;  // per layer: [pos][kv_dim]
  std::vector<double> inv_freq_;
  int64_t pos_ = 0;
  ResidualHook hook_;
};

}  // namespace aloepri
