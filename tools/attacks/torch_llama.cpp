#include "torch_llama.h"

#include <cmath>
#include <limits>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/model/model.h"

namespace aloepri::attacks {

namespace {

torch::Tensor to_torch(const Tensor& t, torch::ScalarType dt) {
  return torch::from_blob(const_cast<float*>(t.ptr()), t.shape, torch::kFloat).clone().to(dt);
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w;
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto y = torch::matmul(x, w.t());
  return b.defined() ? y + b : y;
}

}  // namespace

TorchLlama TorchLlama::load(const std::string& dir, torch::ScalarType dt) {
  HFModel hf(dir);
  TorchLlama m;
  m.cfg_ = hf.config();
  const auto& c = m.cfg_;
  if (c.qk_norm) throw Error(dir, "aloe-attack: qwen3 q/k norms are not supported");
  namespace tn = tensor_names;
  auto get = [&](const std::string& n) { return to_torch(hf.tensor_f32(n), dt); };
  m.embed_ = get(tn::embed());
  m.final_norm_ = get(tn::final_norm());
  m.head_ = c.tie_word_embeddings ? m.embed_ : get(tn::lm_head());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto L = [&](const char* s) { return get(tn::layer(i, s)); };
    TorchLayer l;
    l.attn_norm = L("input_layernorm.weight");
    l.ffn_norm = L("post_attention_layernorm.weight");
    l.wq = L("self_attn.q_proj.weight");
    l.wk = L("self_attn.k_proj.weight");
    l.wv = L("self_attn.v_proj.weight");
    l.wo = L("self_attn.o_proj.weight");
    if (c.attention_bias) {
      l.bq = L("self_attn.q_proj.bias");
      l.bk = L("self_attn.k_proj.bias");
      l.bv = L("self_attn.v_proj.bias");
    }
    if (c.o_bias()) l.bo = L("self_attn.o_proj.bias");
    l.w_gate = L("mlp.gate_proj.weight");
    l.w_up = L("mlp.up_proj.weight");
    l.w_down = L("mlp.down_proj.weight");
    m.layers_.push_back(std::move(l));
  }
  const auto f = rope_inv_freq(c);
  m.inv_freq_ = torch::tensor(f, torch::kDouble);
  return m;
}

torch::Tensor TorchLlama::embed_ids(const torch::Tensor& ids) const { return torch::embedding(embed_, ids); }

torch::Tensor TorchLlama::run(const torch::Tensor& x0, int64_t upto, Trace* trace, int64_t scores_layer) const {
  const auto& c = cfg_;
  if (upto >= c.num_hidden_layers) throw Error("TorchLlama::run", "layer " + std::to_string(upto) + " >= layers");
  const int64_t B = x0.size(0), T = x0.size(1), H = c.num_attention_heads, KV = c.num_key_value_heads,
                Dh = c.head_dim;
  for (int64_t w : attention_windows(c))
    if (w > 0 && w < T) throw Error("TorchLlama::run", "sliding-window attention shorter than the sequence");
  const auto dt = x0.scalar_type();
  auto freqs = torch::outer(torch::arange(T, torch::kDouble), inv_freq_);
  auto emb = torch::cat({freqs, freqs}, -1);
  auto cos = emb.cos().to(dt), sin = emb.sin().to(dt);  // [T, Dh]
  auto mask = torch::ones({T, T}, torch::kBool).triu(1);
  const double scale = 1.0 / std::sqrt(double(Dh));
  if (trace) {
    trace->residual.clear();
    trace->embeddings = x0;
  }
  auto x = x0;
  for (int64_t i = 0; i <= upto; ++i) {
    const auto& L = layers_[size_t(i)];
    auto h = rms_norm(x, L.attn_norm, c.rms_norm_eps);
    auto q = linear(h, L.wq, L.bq).view({B, T, H, Dh}).transpose(1, 2);
    auto k = linear(h, L.wk, L.bk).view({B, T, KV, Dh}).transpose(1, 2);
    auto v = linear(h, L.wv, L.bv).view({B, T, KV, Dh}).transpose(1, 2);
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
    x = x + linear(a, L.wo, L.bo);
    h = rms_norm(x, L.ffn_norm, c.rms_norm_eps);
    auto g = torch::silu(torch::matmul(h, L.w_gate.t()));
    auto u = torch::matmul(h, L.w_up.t());
    x = x + torch::matmul(g * u, L.w_down.t());
    if (trace) trace->residual.push_back(x);
  }
  return x;
}

torch::Tensor TorchLlama::logits(const torch::Tensor& ids) const {
  auto x = run(embed_ids(ids), cfg_.num_hidden_layers - 1);
  x = rms_norm(x, final_norm_, cfg_.rms_norm_eps);
  return torch::matmul(x, head_.t());
}

}  // namespace aloepri::attacks
