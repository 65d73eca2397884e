// One differentiable Llama-family forward pass in libtorch, shared by the trainer (aloe-train),
// the noise-aware adaptation (aloe-adapt) and the learned attacks (aloe-attack), with the
// Hugging Face semantics of the project's ReferenceModel (include/aloepri/forward.h): RMSNorm
// x*rsqrt(mean(x^2)+eps)*w, rotate_half RoPE over the config's inverse frequencies (rope_inv_freq:
// theta and rope_scaling), GQA where query head h reads kv head h / group, q/k/v and o biases,
// Qwen3 q/k norms, SiLU-gated MLP, tied or untied head.
//
// The tensors are held by their HF names (aloepri::tensor_names, expected_tensors order), so a
// trainer's optimizer, a checkpoint and an exported safetensors file all speak the same names.
// The module owns no training policy: which tensors get gradients is the caller's choice
// (train_only), dtype and device are those of the tensors it is given.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "aloepri/formats/hf_config.h"

namespace aloepri::torch_model {

// What a forward pass hands back besides its result (the learned attacks observe these).
struct Trace {
  std::vector<torch::Tensor> residual;  // residual[l]: stream after layer l, [B, T, d] (l <= upto)
  torch::Tensor embeddings;             // input of layer 0, [B, T, d]
  torch::Tensor scores;                 // [B, H, T, T] pre-softmax scores of scores_layer (masked = 0)
};

class Llama {
 public:
  // An HF directory: every tensor of expected_tensors(config) widened to f32, then cast to dtype
  // and moved to device. No tensor requires grad.
  static Llama load(const std::string& dir, torch::ScalarType dtype = torch::kFloat,
                    torch::Device device = torch::kCPU);
  // Tensors by HF name: exactly expected_tensors(config), with those shapes, one dtype and one
  // device (Error naming the tensor otherwise). They are kept as given, not copied: a caller's
  // leaf tensors stay the leaves an optimizer steps. Mixture-of-experts configs are refused
  // (Error naming the field); so is, in run(), a sliding window shorter than the sequence.
  Llama(const ModelConfig& config, std::map<std::string, torch::Tensor> tensors, const std::string& where);

  const ModelConfig& config() const { return cfg_; }
  int64_t hidden() const { return cfg_.hidden_size; }
  int64_t vocab() const { return cfg_.vocab_size; }
  torch::ScalarType dtype() const { return embed().scalar_type(); }

  // HF names in expected_tensors order (the export order).
  const std::vector<std::string>& names() const { return names_; }
  // Every name but the embedding and lm_head: the layers and the final norm.
  std::vector<std::string> body_names() const;
  const torch::Tensor& at(const std::string& name) const;  // Error naming an unknown tensor
  std::vector<torch::Tensor> tensors(const std::vector<std::string>& names) const;
  const torch::Tensor& embed() const { return embed_; }  // [n, d]
  const torch::Tensor& head() const { return head_; }    // [n, d]; the embedding when tied

  // requires_grad on exactly the named tensors, off on every other one (Error on an unknown name).
  void train_only(const std::vector<std::string>& names);

  torch::Tensor embed_ids(const torch::Tensor& ids) const;  // [B, T] -> [B, T, d]
  // Runs layers 0..upto (upto = -1: none; the result is then x) on input embeddings x [B, T, d]
  // (free embeddings allowed: gradients flow to x). Fills trace->residual[0..upto]; with
  // scores_layer in [0, upto] also trace->scores. Returns the residual stream after `upto`.
  torch::Tensor run(const torch::Tensor& x, int64_t upto, Trace* trace = nullptr, int64_t scores_layer = -1) const;
  // Final norm and head on the residual stream after the last layer: logits [B, T, n].
  torch::Tensor head_logits(const torch::Tensor& residual) const;
  // The whole model on input embeddings x [B, T, d] or on token ids [B, T]: logits [B, T, n].
  torch::Tensor logits_of_embeddings(const torch::Tensor& x) const;
  torch::Tensor logits(const torch::Tensor& ids) const;

 private:
  // Handles on the tensors of t_ (same storage and autograd identity), so copies of the module
  // stay valid.
  struct Layer {
    torch::Tensor attn_norm, ffn_norm, wq, wk, wv, wo, w_gate, w_up, w_down;  // HF layout (out x in)
    torch::Tensor bq, bk, bv, bo;  // undefined when absent
    torch::Tensor q_norm, k_norm;  // qwen3 only
  };
  ModelConfig cfg_;
  std::vector<std::string> names_;
  std::map<std::string, torch::Tensor> t_;
  torch::Tensor embed_, final_norm_, head_;
  std::vector<Layer> layers_;
  std::vector<double> inv_freq_;  // rope_inv_freq(config), [dh/2]
  std::vector<int64_t> windows_;  // attention_windows(config)
};

}  // namespace aloepri::torch_model
