// The reference forward pass: Hugging Face semantics (rotate_half RoPE with the config's
// scaling, GQA, RMSNorm with eps, SiLU-gated MLP or Qwen3-MoE's routed SiLU-gated experts, q/k/v
// biases, tied or untied head), weights
// held in f32 and every dot product accumulated in f64. This is the oracle for every accuracy
// and privacy measurement in the project.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aloepri/hf_config.h"
#include "aloepri/tensor.h"

namespace aloepri {

class HFModel;

// Weights in the orientation the forward uses (row vectors: y = x W, W is in x out).
struct ExpertWeights {
  Tensor w_gate, w_up, w_down;           // [d, fe], [d, fe], [fe, d]
};

struct LayerWeights {
  Tensor attn_norm, ffn_norm;            // [d]
  Tensor wq, wk, wv, wo;                 // [d, m*dh], [d, mkv*dh], [d, mkv*dh], [m*dh, d]
  Tensor bq, bk, bv;                     // empty when absent
  Tensor q_norm, k_norm;                 // qwen3 only, [dh]
  Tensor w_gate, w_up, w_down;           // [d, ff], [d, ff], [ff, d]; empty in a sparse (MoE) layer
  Tensor router;                         // [d, E] (router logits = x router); empty in a dense layer
  std::vector<ExpertWeights> experts;    // E experts of a sparse layer
  Tensor bo;                             // [d], o_proj bias (llama with attention_bias); empty when absent
};

struct ModelWeights {
  ModelConfig config;
  Tensor embed;       // [n, d]
  Tensor final_norm;  // [d]
  Tensor head;        // [d, n]; may be left empty when config.tie_word_embeddings (= embed^T)
  std::vector<LayerWeights> layers;

  static ModelWeights load(const HFModel& m);
};

// Sliding-window length per layer (0 = full causal attention): Mistral's `sliding_window`,
// Qwen2's `use_sliding_window` for layers >= `max_window_layers`, read from config.raw.
std::vector<int64_t> attention_windows(const ModelConfig& c);

// One token's routing in a sparse layer (transformers' Qwen3MoeSparseMoeBlock): softmax over the
// E router logits, the k most probable experts (ties to the lower index), their probabilities
// divided by their sum when norm_topk_prob. Returns (expert, weight), most probable first.
std::vector<std::pair<int64_t, double>> route_token(const double* logits, int64_t E, int64_t k, bool norm_topk_prob);

// Observation hooks for eval/audit: called with (layer index, residual stream after the layer).
// `residual` holds the rows of the positions processed by the current call, row-major [t, d]
// (t = 1 for step(); long forward() calls are processed in chunks, one call per chunk and
// layer). While the hook runs, ReferenceModel::position() is the position of the first row.
using ResidualHook = std::function<void(int64_t layer, const std::vector<double>& residual)>;

// Called for every row of a sparse layer with the route it took: (layer, row of the current call,
// (expert, weight) pairs as route_token returns them). As for ResidualHook, position() is the
// position of the call's first row while the hook runs. For measurements (routing agreement).
using RouterHook =
    std::function<void(int64_t layer, int64_t row, const std::vector<std::pair<int64_t, double>>& route)>;

class ReferenceModel {
 public:
  explicit ReferenceModel(ModelWeights w);  // checks every shape; throws Error naming the tensor
  static ReferenceModel load(const std::string& model_dir);
  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  int64_t vocab_size() const { return w_.config.vocab_size; }

  // Feed one token at the next position (KV cache grows); returns its logits [n].
  std::vector<double> step(int64_t token_id);
  // Feed a sequence at the next positions (continuing the KV cache, like repeated step();
  // call reset() first for a fresh sequence); returns logits of every position, row-major [T, n].
  std::vector<double> forward(const std::vector<int64_t>& ids);
  // Like forward(), but hands each position's logits (n values) to `on_logits(t, logits)`
  // instead of keeping all of them, so long sequences with big vocabularies fit in memory.
  void forward_each(const std::vector<int64_t>& ids,
                    const std::function<void(int64_t t, const double* logits)>& on_logits);
  // Like forward(), returning only the logits of the last position [n].
  std::vector<double> prefill(const std::vector<int64_t>& ids);
  // Resets, then returns log p(ids[t+1] | ids[0..t]) for t = 0 .. T-2 (natural log).
  std::vector<double> score(const std::vector<int64_t>& ids);
  // Final-normed hidden states [B, d] of B alternative tokens, each fed alone at the next
  // position after the cached prefix (what step(ids[b]) would see), computed as one batch; the
  // cache and position are left unchanged. The head is weights().head ([d, n]): logits = h head.
  // Used by the oracle attack, which asks what the model does with every token after [bos].
  std::vector<double> branch_hidden(const std::vector<int64_t>& ids);
  void reset();  // clear the KV cache
  int64_t position() const { return pos_; }
  // Greedy continuation of n tokens after prompt (resets first). Ties go to the lowest id.
  std::vector<int64_t> greedy(const std::vector<int64_t>& prompt, int64_t n);
  void set_residual_hook(ResidualHook h) { hook_ = std::move(h); }
  void set_router_hook(RouterHook h) { router_hook_ = std::move(h); }

  // Index of the largest value, the lowest index on ties.
  static int64_t argmax(const double* logits, int64_t n);

 private:
  struct DoubleWeights;
  // Runs T tokens through every layer at positions pos_ .. pos_+T-1, appends their keys and
  // values to the cache, advances pos_; returns the final-normed hidden states [T, d].
  // branch = true: the T tokens are alternatives at position pos_ (branch_hidden); the cache and
  // pos_ stay unchanged and the residual hook is not called.
  std::vector<double> run_layers(const int64_t* ids, int64_t T, bool branch);
  void branch_attention(const double* Q, const double* K, const double* V, int64_t T,
                        const std::vector<double>& kc, const std::vector<double>& vc, int64_t win,
                        double* A) const;

  // Y [T, d]: the routed experts of sparse layer `layer` on the normed rows Xn [T, d].
  void moe_ffn(size_t layer, const double* Xn, int64_t T, double* Y) const;

  ModelWeights w_;
  std::shared_ptr<const DoubleWeights> dw_;  // f64 copies of the matrices (for dgemm)
  std::vector<std::vector<double>> k_cache_, v_cache_;  // per layer: [pos][kv_dim]
  std::vector<double> inv_freq_;
  std::vector<int64_t> window_;  // per layer, 0 = none
  int64_t pos_ = 0;
  ResidualHook hook_;
  RouterHook router_hook_;
};

}  // namespace aloepri
