#include "llama.h"

#include <cmath>
#include <limits>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/model/layout.h"
#include "aloepri/model/model.h"

namespace aloepri::torch_model {

namespace {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w;
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {}) {
  auto y = torch::matmul(x, w.t());
  return b.defined() ? y + b : y;
}

std::string shape_str(c10::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

Llama Llama::load(const std::string& dir, torch::ScalarType dtype, torch::Device device) {
  HFModel hf(dir);
  std::map<std::string, torch::Tensor> t;
  for (const auto& [name, shape] : expected_tensors(hf.config())) {
    const Tensor v = hf.tensor_f32(name);
    t[name] = torch::from_blob(const_cast<float*>(v.ptr()), shape, torch::kFloat).clone().to(device, dtype);
  }
  return Llama(hf.config(), std::move(t), dir);
}

Llama::Llama(const ModelConfig& config, std::map<std::string, torch::Tensor> tensors, const std::string& where)
    : cfg_(config), t_(std::move(tensors)) {
  const auto& c = cfg_;
  if (c.is_moe()) throw Error(where, "config.json: num_experts: mixture-of-experts layers are not supported here");
  if (c.mla()) throw Error(where, "config.json: " + family_name(c.family) + ": multi-head latent attention is not supported here");
  const auto expected = expected_tensors(c);
  if (t_.size() != expected.size())
    for (const auto& [name, tensor] : t_) {
      bool known = false;
      for (const auto& e : expected) known = known || e.first == name;
      if (!known) throw Error(where, "tensor '" + name + "' is not part of this config");
    }
  for (const auto& [name, shape] : expected) {
    auto it = t_.find(name);
    if (it == t_.end() || !it->second.defined()) throw Error(where, "missing tensor '" + name + "'");
    if (it->second.sizes() != c10::IntArrayRef(shape))
      throw Error(where, "tensor '" + name + "' has shape " + shape_str(it->second.sizes()) + ", expected " +
                             shape_str(shape));
    names_.push_back(name);
  }
  namespace tn = tensor_names;
  embed_ = t_.at(tn::embed());
  final_norm_ = t_.at(tn::final_norm());
  head_ = c.tie_word_embeddings ? embed_ : t_.at(tn::lm_head());
  for (const auto& n : names_) {
    const auto& x = t_.at(n);
    if (x.scalar_type() != embed_.scalar_type() || x.device() != embed_.device())
      throw Error(where, "tensor '" + n + "' differs in dtype or device from the embedding");
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    using layout::Role;
    auto L = [&](Role r) { return t_.at(layout::hf_name(c, r, i)); };
    Layer l;
    layout::load_attention(l, c, L);
    l.ffn_norm = L(Role::FfnNorm);
    l.w_gate = L(Role::Gate);
    l.w_up = L(Role::Up);
    l.w_down = L(Role::Down);
    layers_.push_back(std::move(l));
  }
  inv_freq_ = rope_inv_freq(c);
  windows_ = attention_windows(c);
}

std::vector<std::string> Llama::body_names() const {
  std::vector<std::string> v;
  for (const auto& n : names_)
    if (n != tensor_names::embed() && n != tensor_names::lm_head()) v.push_back(n);
  return v;
}

const torch::Tensor& Llama::at(const std::string& name) const {
  auto it = t_.find(name);
  if (it == t_.end()) throw Error("torch_model::Llama", "no tensor '" + name + "'");
  return it->second;
}

std::vector<torch::Tensor> Llama::tensors(const std::vector<std::string>& names) const {
  std::vector<torch::Tensor> v;
  for (const auto& n : names) v.push_back(at(n));
  return v;
}

void Llama::train_only(const std::vector<std::string>& names) {
  for (const auto& n : names) at(n);  // every name known before anything changes
  for (auto& [name, t] : t_) t.set_requires_grad(false);
  for (const auto& n : names) t_.at(n).set_requires_grad(true);
}

torch::Tensor Llama::embed_ids(const torch::Tensor& ids) const { return torch::embedding(embed_, ids); }

torch::Tensor Llama::run(const torch::Tensor& x0, int64_t upto, Trace* trace, int64_t scores_layer) const {
  const auto& c = cfg_;
  if (upto >= c.num_hidden_layers)
    throw Error("torch_model::Llama::run", "layer " + std::to_string(upto) + " >= " +
                                               std::to_string(c.num_hidden_layers) + " layers");
  const int64_t B = x0.size(0), T = x0.size(1), H = c.num_attention_heads, KV = c.num_key_value_heads,
                Dh = c.head_dim;
  for (int64_t w : windows_)
    if (w > 0 && w < T)
      throw Error("torch_model::Llama::run", "config.json: sliding_window " + std::to_string(w) +
                                                 " is shorter than the sequence (" + std::to_string(T) +
                                                 "): windowed attention is not supported here");
  const auto dt = x0.scalar_type();
  const auto dev = x0.device();
  // RoPE tables in f64 (HF: emb = cat(freqs, freqs)), rounded once to the compute dtype.
  auto freqs = torch::outer(torch::arange(T, torch::kDouble), torch::tensor(inv_freq_, torch::kDouble));
  auto emb = torch::cat({freqs, freqs}, -1);
  auto cos = emb.cos().to(dev, dt), sin = emb.sin().to(dev, dt);  // [T, Dh]
  auto mask = torch::ones({T, T}, torch::kBool).triu(1).to(dev);
  const double scale = 1.0 / std::sqrt(double(Dh));
  if (trace) {
    trace->residual.clear();
    trace->embeddings = x0;
  }
  auto x = x0;
  for (int64_t i = 0; i <= upto; ++i) {
    const auto& L = layers_[size_t(i)];
    auto h = rms_norm(x, L.attn_norm, c.rms_norm_eps);
    auto q = dense(h, L.wq, L.bq).view({B, T, H, Dh});
    auto k = dense(h, L.wk, L.bk).view({B, T, KV, Dh});
    if (c.qk_norm) {  // qwen3: RMSNorm over each head before RoPE
      q = rms_norm(q, L.q_norm, c.rms_norm_eps);
      k = rms_norm(k, L.k_norm, c.rms_norm_eps);
    }
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    auto v = dense(h, L.wv, L.bv).view({B, T, KV, Dh}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    if (H != KV) {  // HF repeat_kv: query head j reads kv head j / group
      k = k.repeat_interleave(H / KV, 1);
      v = v.repeat_interleave(H / KV, 1);
    }
    auto s = torch::matmul(q, k.transpose(-2, -1)) * scale;
    if (trace && i == scores_layer) trace->scores = s.masked_fill(mask, 0.0);
    s = s.masked_fill(mask, -std::numeric_limits<double>::infinity());
    auto a = torch::matmul(torch::softmax(s, -1), v).transpose(1, 2).reshape({B, T, H * Dh});
    x = x + dense(a, L.wo, L.bo);
    h = rms_norm(x, L.ffn_norm, c.rms_norm_eps);
    auto g = torch::silu(dense(h, L.w_gate));
    auto u = dense(h, L.w_up);
    x = x + dense(g * u, L.w_down);
    if (trace) trace->residual.push_back(x);
  }
  return x;
}

torch::Tensor Llama::head_logits(const torch::Tensor& residual) const {
  return torch::matmul(rms_norm(residual, final_norm_, cfg_.rms_norm_eps), head_.t());
}

torch::Tensor Llama::logits_of_embeddings(const torch::Tensor& x) const {
  return head_logits(run(x, cfg_.num_hidden_layers - 1));
}

torch::Tensor Llama::logits(const torch::Tensor& ids) const { return logits_of_embeddings(embed_ids(ids)); }

}  // namespace aloepri::torch_model
