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

#include "aloepri/formats/hf_config.h"
#include "aloepri/core/tensor.h"

namespace aloepri {

class HFModel;

// Weights as Hugging Face stores them (nn.Linear weight = out x in, y = x W^T), f32: the one
// layout of the engine, the obfuscation calibrator and the weight attacks, so a checkpoint is
// read as it is stored and nothing holds a second orientation.
struct ExpertWeights {
  Tensor w_gate, w_up, w_down;           // [fe, d], [fe, d], [d, fe]
};

struct LayerWeights {
  Tensor attn_norm, ffn_norm;            // [d]
  Tensor wq, wk, wv, wo;                 // [m*dh, d], [mkv*dh, d], [mkv*dh, d], [d, m*dh]
  Tensor bq, bk, bv;                     // empty when absent
  Tensor q_norm, k_norm;                 // qwen3 only, [dh]
  Tensor w_gate, w_up, w_down;           // [ff, d], [ff, d], [d, ff]; empty in a sparse (MoE) layer
  Tensor router;                         // [E, d] (router logits = x router^T); empty in a dense layer
  std::vector<ExpertWeights> experts;    // E experts of a sparse layer
  Tensor bo;                             // [d], o_proj bias (llama with attention_bias); empty when absent
  // DeepSeek multi-head latent attention (config.mla(); wq then holds q_proj when q_lora_rank is 0,
  // and wk / wv stay empty). H heads, nope + rope = dh, v = v_head_dim.
  Tensor wq_a, q_a_norm, wq_b;           // [q_lora, d], [q_lora], [H*dh, q_lora]
  Tensor wkv_a, kv_a_norm, wkv_b;        // [kv_lora + rope, d], [kv_lora], [H*(nope+v), kv_lora]
  Tensor router_bias;                    // [E], DeepSeek-V3's e_score_correction_bias; empty when absent
  ExpertWeights shared;                  // DeepSeek shared experts as one MLP; empty when absent
};

struct ModelWeights {
  ModelConfig config;
  Tensor embed;       // [n, d]
  Tensor final_norm;  // [d]
  Tensor head;        // [n, d] (lm_head.weight; load() fills it with the embedding when tied; may
                      // be left empty in memory when config.tie_word_embeddings)
  std::vector<LayerWeights> layers;

  static ModelWeights load(const HFModel& m);
  int64_t vocab() const { return embed.rows(); }
  int64_t hidden() const { return embed.cols(); }
};

// Sliding-window length per layer (0 = full causal attention): Mistral's `sliding_window`,
// Qwen2's `use_sliding_window` for layers >= `max_window_layers`, read from config.raw.
std::vector<int64_t> attention_windows(const ModelConfig& c);

// One token's routing in a sparse layer (transformers' Qwen3MoeSparseMoeBlock): softmax over the
// E router logits, the k most probable experts (ties to the lower index), their probabilities
// divided by their sum when norm_topk_prob. Returns (expert, weight), most probable first.
std::vector<std::pair<int64_t, double>> route_token(const double* logits, int64_t E, int64_t k, bool norm_topk_prob);
// DeepSeek-V2/V3 routing of one token (transformers' DeepseekV2/V3 MoE gate): scores = softmax or
// sigmoid of the logits; the choice is made on scores (+ bias for noaux_tc) within the topk_group
// best groups (a group's score: its best expert for group_limited_greedy, the sum of its two best
// for noaux_tc); weights are the unbiased scores, renormalised when norm_topk_prob, times
// routed_scaling_factor. bias: E values or null. Returns (expert, weight), best choice first.
std::vector<std::pair<int64_t, double>> route_token_deepseek(const ModelConfig& c, const double* logits,
                                                             const double* bias);

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

// One decoder layer over a whole sequence at positions 0 .. T-1 (causal, the layer's sliding
// window), on a layer in the one layout (HF, f32): the code ReferenceModel runs for each layer,
// for callers that hold one layer at a time (the obfuscation calibrator). Each matrix is
// converted to f64 only while its product runs, so a caller never holds its layer twice.
class LayerForward {
 public:
  explicit LayerForward(const ModelConfig& c);
  const ModelConfig& config() const { return c_; }
  // The attention sublayer's output [T, d] on the residual stream X [T, d] (row-major): o_proj of
  // the attention over rms_norm(X), its bias included, before the residual add.
  std::vector<double> attention(int64_t layer, const LayerWeights& L, const std::vector<double>& X) const;
  // The FFN sublayer's output [T, d] (dense, or the routed experts of a sparse layer) on
  // rms_norm(X) with the layer's ffn_norm, before the residual add.
  std::vector<double> ffn(int64_t layer, const LayerWeights& L, const std::vector<double>& X) const;

 private:
  ModelConfig c_;
  std::vector<double> inv_freq_;
  std::vector<int64_t> window_;
};

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
  // cache and position are left unchanged. The head is weights().head ([n, d]): logits = h head^T.
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

  ModelWeights w_;
  std::shared_ptr<const DoubleWeights> dw_;  // f64 copies of the matrices, [in, out] (for dgemm)
  std::vector<std::vector<double>> k_cache_, v_cache_;  // per layer: [pos][kv_dim]
  std::vector<double> inv_freq_;
  std::vector<int64_t> window_;  // per layer, 0 = none
  int64_t pos_ = 0;
  ResidualHook hook_;
  RouterHook router_hook_;
};

}  // namespace aloepri
