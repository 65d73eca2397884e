// A differentiable Llama / Mistral / Qwen2 forward pass in libtorch with the Hugging Face
// semantics of the project's ReferenceModel (rotate_half RoPE with the config's scaling, GQA,
// RMSNorm with eps, SiLU-gated MLP, q/k/v and o biases, tied or untied head). It runs both the
// plaintext model (the attacker's public model) and an obfuscated checkpoint (hidden size d')
// and exposes what the attacks need: the residual stream after each layer and the pre-softmax
// attention scores of one layer, starting from token ids or from free input embeddings.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/formats/hf_config.h"

namespace aloepri::attacks {

struct TorchLayer {
  torch::Tensor attn_norm, ffn_norm;   // [d]
  torch::Tensor wq, wk, wv, wo;        // HF layout (out x in)
  torch::Tensor bq, bk, bv, bo;        // undefined when absent
  torch::Tensor w_gate, w_up, w_down;  // HF layout
};

// What a forward pass hands back besides the logits.
struct Trace {
  std::vector<torch::Tensor> residual;  // residual[l]: stream after layer l, [B, T, d] (l <= upto)
  torch::Tensor embeddings;             // input of layer 0, [B, T, d]
  torch::Tensor scores;                 // [B, H, T, T] pre-softmax scores of scores_layer (masked = 0)
};

class TorchLlama {
 public:
  // Loads an HF directory (weights widened to f32, then cast to dtype). Qwen3 (q/k norms) and
  // sliding windows shorter than the sequences used are not supported (Error).
  static TorchLlama load(const std::string& dir, torch::ScalarType dtype = torch::kFloat);

  const ModelConfig& config() const { return cfg_; }
  int64_t hidden() const { return cfg_.hidden_size; }
  int64_t vocab() const { return cfg_.vocab_size; }
  const torch::Tensor& embed() const { return embed_; }  // [n, d]
  torch::ScalarType dtype() const { return embed_.scalar_type(); }

  // Runs layers 0..upto (upto = -1: none; the residual stream is then the embedding) on input
  // embeddings x [B, T, d]. Fills trace->residual[0..upto]; with scores_layer in [0, upto] also
  // trace->scores. Returns the residual stream after layer `upto`.
  torch::Tensor run(const torch::Tensor& x, int64_t upto, Trace* trace = nullptr,
                    int64_t scores_layer = -1) const;
  // Full model: logits [B, T, n] of token ids [B, T].
  torch::Tensor logits(const torch::Tensor& ids) const;
  torch::Tensor embed_ids(const torch::Tensor& ids) const;  // [B, T] -> [B, T, d]

 private:
  ModelConfig cfg_;
  torch::Tensor embed_, final_norm_, head_;  // head: HF (n x d)
  std::vector<TorchLayer> layers_;
  torch::Tensor inv_freq_;  // [dh/2], f64
};

}  // namespace aloepri::attacks
