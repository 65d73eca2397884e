// The obfuscation steps: embedding, one layer (attention, then a dense or sparse FFN), final norm
// and head. See steps.h.
#include "steps.h"

#include <cmath>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/model/layout.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/mla.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#include "calibrator.h"
#include "executor_internal.h"

namespace aloepri {

using layout::Role;
using obf::Mat;

namespace {

std::vector<float> as_vec(const Tensor& t) { return t.data; }

Tensor mat_f32(const Mat& m) { return obf::to_tensor(m); }

double fro2(const Tensor& t) {
  double s = 0;
  for (float x : t.data) s += double(x) * x;
  return s;
}

// A sparse layer's FFN, written in declare_outputs' order: the router (rows permuted by Z_router,
// then read through Q like any reader), then for each slot s the plaintext expert Z_router^-1(s)
// with its own channel keys, readers through their own Q instances, down through the shared Pd.
// One expert in memory at a time.
void obfuscate_moe_ffn(const HFModel& plain, const Seed& seed, int64_t l, const std::vector<float>& ffn_norm,
                       const obf::KeyMatrices& K, const Tensor& Pd, double scale_range, bool router_norm,
                       const std::function<void(const std::string&, std::vector<float>)>& put) {
  using layout::Role;
  const ModelConfig& c = plain.config();
  const std::string ls = "layer/" + std::to_string(l);
  // DeepSeek's group-limited routing keeps whole groups: Z_router may only move a group as a block.
  const int64_t groups = c.mla() && c.topk_method != "greedy" ? c.n_group : 1;
  const obf::MoeKeys MK = obf::draw_moe_keys(seed, l, c.num_experts, c.moe_intermediate_size, scale_range, groups);
  Tensor router = obf::read_residual(
      obf::permute_router(load_and_release(plain, layout::hf_name(c, Role::Router, l)), MK.expert_slot), ffn_norm,
      mat_f32(K.Q(ls + "/router")));
  if (router_norm) obf::normalise_rows(router);
  put(layout::hf_name(c, Role::Router, l), std::move(router.data));
  if (c.router_bias()) {  // chooses with the router's scores, so it moves with the experts
    const Tensor b = load_and_release(plain, layout::hf_name(c, Role::RouterBias, l));
    std::vector<float> pb(b.data.size());
    for (int64_t e = 0; e < c.num_experts; ++e) pb[size_t(MK.expert_slot[size_t(e)])] = b.data[size_t(e)];
    put(layout::hf_name(c, Role::RouterBias, l), std::move(pb));
  }
  const std::vector<int64_t> owner = invert_permutation(MK.expert_slot);  // slot -> plaintext expert
  for (int64_t s = 0; s < c.num_experts; ++s) {
    const int64_t e = owner[size_t(s)];
    auto X = [&](Role r) { return load_and_release(plain, layout::hf_name(c, r, l, e)); };
    obf::FfnHF S = obf::transform_ffn_channels(obf::FfnHF{X(Role::ExpertGate), X(Role::ExpertUp), X(Role::ExpertDown)},
                                               MK.experts[size_t(e)]);
    const std::string es = ls + "/expert/" + std::to_string(e);
    // The double Q instance dies inside, before the GEMM that uses its f32 copy.
    auto reader_key = [&](const char* role) { return mat_f32(K.Q(es + role)); };
    put(layout::hf_name(c, Role::ExpertGate, l, s), obf::read_residual(std::move(S.gate), ffn_norm, reader_key("/gate")).data);
    put(layout::hf_name(c, Role::ExpertUp, l, s), obf::read_residual(std::move(S.up), ffn_norm, reader_key("/up")).data);
    put(layout::hf_name(c, Role::ExpertDown, l, s), obf::write_residual(S.down, Pd).data);
  }
  if (c.mla() && c.n_shared_experts > 0) {  // one always-on MLP: its own channel keys, the experts' Pd
    auto X = [&](Role r) { return load_and_release(plain, layout::hf_name(c, r, l)); };
    obf::FfnHF S = obf::transform_ffn_channels(
        obf::FfnHF{X(Role::SharedGate), X(Role::SharedUp), X(Role::SharedDown)},
        obf::draw_ffn_keys(seed, l, c.moe_intermediate_size * c.n_shared_experts, scale_range));
    auto reader_key = [&](const char* role) { return mat_f32(K.Q(ls + "/shared" + role)); };
    put(layout::hf_name(c, Role::SharedGate, l), obf::read_residual(std::move(S.gate), ffn_norm, reader_key("/gate")).data);
    put(layout::hf_name(c, Role::SharedUp, l), obf::read_residual(std::move(S.up), ffn_norm, reader_key("/up")).data);
    put(layout::hf_name(c, Role::SharedDown, l), obf::write_residual(S.down, Pd).data);
  }
}

// The condition number of MLA's per-head nope and value maps when --value-cond is 0 ([choice]:
// the report's Gaussian draw has no MLA counterpart; small enough that a q8_0 export stays close).
constexpr double kMlaDefaultCond = 8.0;

// DeepSeek's attention block: stage 1 (obf::transform_mla), then the residual maps: q_a (or q)
// and kv_a read the attention-normed residual through their own Q, o writes through Po. Written
// in the layout's order.
void mla_attention(StepContext& s, int64_t l, const Tensor& Po) {
  const ModelConfig& c = s.plain.config();
  const ObfuscationParams& P = s.opt.params;
  const std::string ls = "layer/" + std::to_string(l);
  auto name = [&](Role r) { return layout::hf_name(c, r, l); };
  auto T = [&](Role r) { return load_and_release(s.plain, name(r)); };
  auto put = [&](Role r, Tensor t) { s.put(name(r), std::move(t.data)); };
  auto reader_key = [&](const char* role) { return mat_f32(s.K.Q(ls + role)); };
  obf::MlaHF B;
  if (c.q_lora_rank > 0) {
    B.q_a = T(Role::QueryA);
    B.q_a_norm = T(Role::QANorm);
    B.q_b = T(Role::QueryB);
  } else {
    B.q = T(Role::Query);
  }
  B.kv_a = T(Role::KvA);
  B.kv_a_norm = T(Role::KvANorm);
  B.kv_b = T(Role::KvB);
  B.o = T(Role::Output);
  const auto wn = as_vec(T(Role::AttnNorm));
  const obf::MlaKeys MK =
      obf::draw_mla_keys(s.seed, l, c, P.value_cond >= 1 ? P.value_cond : kMlaDefaultCond, P.head_scale_range);
  obf::MlaHF S = obf::transform_mla(std::move(B), MK, c);
  if (c.q_lora_rank > 0) {
    put(Role::QueryA, obf::read_residual(std::move(S.q_a), wn, reader_key("/q_a")));
    put(Role::QANorm, std::move(S.q_a_norm));
    put(Role::QueryB, std::move(S.q_b));
  } else {
    put(Role::Query, obf::read_residual(std::move(S.q), wn, reader_key("/q")));
  }
  put(Role::KvA, obf::read_residual(std::move(S.kv_a), wn, reader_key("/kv_a")));
  put(Role::KvANorm, std::move(S.kv_a_norm));
  put(Role::KvB, std::move(S.kv_b));
  put(Role::Output, obf::write_residual(S.o, Po));
}

}  // namespace

KappaTracker::KappaTracker(const ObfuscationParams& P, const obf::KeyMatrices& K, int64_t dp)
    : exact_norm_(P.keymat == obf::KeymatVariant::ExactNorm), K_(K), dp_(dp) {}

KappaTracker::~KappaTracker() = default;

double KappaTracker::now() const {
  if (exact_norm_) return 1.0;  // ||xP|| = sqrt(d'/d) ||x|| exactly
  if (calib) return calib->kappa();
  return std::sqrt(writer_fro_ / double(writers_) / double(dp_));
}

void KappaTracker::add_writer(const Tensor& Pf) {
  writer_fro_ += fro2(Pf);
  ++writers_;
}

void KappaTracker::skip_writer(const std::string& role) {
  if (!exact_norm_) writer_fro_ += fro2(mat_f32(K_.P(role)));
  ++writers_;
}

void embedding_step(StepContext& s) {
  const ModelConfig& c = s.plain.config();
  const ObfuscationParams& P = s.opt.params;
  Tensor Pemb = mat_f32(s.K.P("emb"));
  s.kappa.add_writer(Pemb);
  const std::string name = layout::hf_name(c, Role::Embedding);
  const TensorView& ev = s.plain.weights().get(name);
  if (P.kappa == KappaMode::Calibrated) s.kappa.calib = std::make_unique<Calibrator>(c, s.opt.calib_ids, ev, Pemb);
  RngStream noise(s.seed, "noise/embed");
  auto copy_noise = [&seed = s.seed](int64_t copy) { return RngStream(seed, "noise/embed/copy/" + std::to_string(copy)); };
  s.put(name, obf::transform_vocab_matrix(c.vocab_size, c.hidden_size, mapped_rows(ev), s.vm, s.emb_alpha,
                                          P.noise_scale, noise, copy_noise, {}, Pemb, false)
                  .data);
}

void layer_step(StepContext& s, int64_t l) {
  const ModelConfig& c = s.plain.config();
  const ObfuscationParams& P = s.opt.params;
  const obf::KeyMatrices& K = s.K;
  const int64_t d = c.hidden_size, dp = s.dp;
  const std::string ls = "layer/" + std::to_string(l);
  auto name = [&](Role r) { return layout::hf_name(c, r, l); };
  auto T = [&](Role r) { return load_and_release(s.plain, name(r)); };
  // A reader's Q in f32; the double instance dies inside, before the GEMM that uses it.
  auto reader_key = [&](const char* role) { return mat_f32(K.Q(ls + role)); };
  auto put = [&](Role r, Tensor t) { s.put(name(r), std::move(t.data)); };

  // Attention.
  const double k_in = s.kappa.now();
  s.note_kappa(k_in);
  s.put(name(Role::AttnNorm), std::vector<float>(static_cast<size_t>(dp), float(k_in)));
  LayerWeights LW;
  if (c.mla()) {
    Tensor Po = mat_f32(K.P(ls + "/o"));
    s.kappa.add_writer(Po);
    mla_attention(s, l, Po);
  } else {
    // The layer in the engine's structure (HF layout), so that the calibrator runs the engine's
    // forward on it; the transforms then take its tensors over.
    layout::load_attention(LW, c, T);
    Tensor Po = mat_f32(K.P(ls + "/o"));
    if (s.kappa.calib) s.kappa.calib->attention(l, LW, Po);
    const Tensor attn_norm = std::move(LW.attn_norm), o_bias = std::move(LW.bo);
    obf::AttnHF A{std::move(LW.wq),     std::move(LW.wk), std::move(LW.wv),     std::move(LW.wo),
                  std::move(LW.bq),     std::move(LW.bk), std::move(LW.bv),     std::move(LW.q_norm),
                  std::move(LW.k_norm)};
    s.kappa.add_writer(Po);
    {
      obf::AttnKeyOptions ako;
      ako.beta = P.beta;
      ako.gamma = P.gamma;
      ako.scale_range = P.head_scale_range;
      ako.per_group_perm = P.per_group_perm;
      ako.value_cond = P.value_cond;
      ako.qk_norm = c.qk_norm;
      const int64_t dh = c.head_dim;
      obf::AttnKeys AK = obf::draw_attn_keys(s.seed, l, c.num_attention_heads, c.num_key_value_heads, dh, s.inv_freq, ako);
      obf::AttnHF S = obf::transform_attention_heads(A, AK, dh);
      A = obf::AttnHF();  // release the plaintext copies early
      const auto wn = as_vec(attn_norm);
      put(Role::Query, obf::read_residual(std::move(S.q), wn, reader_key("/q")));
      put(Role::Key, obf::read_residual(std::move(S.k), wn, reader_key("/k")));
      put(Role::Value, obf::read_residual(std::move(S.v), wn, reader_key("/v")));
      if (c.attention_bias) {
        put(Role::QueryBias, std::move(S.bq));
        put(Role::KeyBias, std::move(S.bk));
        put(Role::ValueBias, std::move(S.bv));
      }
      if (c.qk_norm) {
        put(Role::QNorm, std::move(S.q_norm));
        put(Role::KNorm, std::move(S.k_norm));
      }
      put(Role::Output, obf::write_residual(S.o, Po));
      if (c.o_bias()) {
        Tensor bo({1, d});
        bo.data = o_bias.data;
        Tensor r({1, dp});
        linalg::gemm(false, false, 1, int(dp), int(d), 1.0f, bo.ptr(), int(d), Po.ptr(),
                    int(dp), 0.0f, r.ptr(), int(dp));
        put(Role::OutputBias, std::move(r));
      }
    }
  }
  // FFN.
  const double k_post = s.kappa.now();
  s.note_kappa(k_post);
  s.put(name(Role::FfnNorm), std::vector<float>(static_cast<size_t>(dp), float(k_post)));
  Tensor ffn_norm = T(Role::FfnNorm);
  if (c.is_moe_layer(l)) {
    Tensor Pd = mat_f32(K.P(ls + "/down"));  // every expert writes through the layer's one map
    s.kappa.add_writer(Pd);
    obfuscate_moe_ffn(s.plain, s.seed, l, as_vec(ffn_norm), K, Pd, P.ffn_scale_range, P.router_norm, s.put);
    return;
  }
  LW.ffn_norm = std::move(ffn_norm);
  LW.w_gate = T(Role::Gate);
  LW.w_up = T(Role::Up);
  LW.w_down = T(Role::Down);
  Tensor Pd = mat_f32(K.P(ls + "/down"));
  if (s.kappa.calib) s.kappa.calib->ffn(l, LW, Pd);
  ffn_norm = std::move(LW.ffn_norm);
  obf::FfnHF F{std::move(LW.w_gate), std::move(LW.w_up), std::move(LW.w_down)};
  s.kappa.add_writer(Pd);
  {
    obf::FfnHF S = obf::transform_ffn_channels(std::move(F),
                                               obf::draw_ffn_keys(s.seed, l, c.intermediate_size, P.ffn_scale_range));
    F = obf::FfnHF();
    const auto wn = as_vec(ffn_norm);
    put(Role::Gate, obf::read_residual(std::move(S.gate), wn, reader_key("/gate")));
    put(Role::Up, obf::read_residual(std::move(S.up), wn, reader_key("/up")));
    put(Role::Down, obf::write_residual(S.down, Pd));
  }
}

void head_step(StepContext& s) {
  const ModelConfig& c = s.plain.config();
  const ObfuscationParams& P = s.opt.params;
  const double k_f = s.kappa.now();
  s.note_kappa(k_f);
  s.put(layout::hf_name(c, Role::FinalNorm), std::vector<float>(static_cast<size_t>(s.dp), float(k_f)));
  s.kappa.calib.reset();
  const TensorView& hv = s.plain.weights().get(layout::hf_name(c, c.tie_word_embeddings ? Role::Embedding : Role::Head));
  const auto wf = as_vec(s.plain.tensor_f32(layout::hf_name(c, Role::FinalNorm)));
  RngStream noise(s.seed, "noise/head");
  auto copy_noise = [&seed = s.seed](int64_t copy) { return RngStream(seed, "noise/head/copy/" + std::to_string(copy)); };
  s.put(layout::hf_name(c, Role::Head),
        obf::transform_vocab_matrix(c.vocab_size, c.hidden_size, mapped_rows(hv), s.vm, s.head_alpha, P.noise_scale,
                                    noise, copy_noise, wf, mat_f32(s.K.Q("head")), true)
            .data);
}

}  // namespace aloepri
