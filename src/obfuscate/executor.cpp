// The streaming obfuscation executor: plaintext layer in, obfuscated layer out, never the whole
// model in memory (peak: the key-matrix base, one layer, and the embedding/head).
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>

#include "aloepri/error.h"
#include "aloepri/forward.h"
#include "aloepri/linalg.h"
#include "aloepri/keyfile.h"
#include "aloepri/mmap.h"
#include "aloepri/model.h"
#include "aloepri/model/layout.h"
#include "aloepri/obfuscate.h"
#include "aloepri/output.h"
#include "aloepri/progress.h"
#include "aloepri/safetensors.h"
#include "aloepri/write_behind.h"
#include "executor_internal.h"

namespace fs = std::filesystem;

namespace aloepri {

using obf::KeymatVariant;
using obf::Mat;

namespace {

std::vector<float> as_vec(const Tensor& t) { return t.data; }

Tensor mat_f32(const Mat& m) { return obf::to_tensor(m); }

double fro2(const Tensor& t) {
  double s = 0;
  for (float x : t.data) s += double(x) * x;
  return s;
}

// The plaintext forward of the calibration ids, one layer at a time (the engine's LayerForward, the
// code the reference forward runs), alongside the obfuscated residual stream sum_k x_k P_k, so
// kappa = sqrt(d/d') mean_t ||x~_t|| / ||x_t|| is measured at every RMSNorm on real activations
// (method.md section 5 [choice]). Holds the two streams only; the layer is the caller's.
class Calibrator {
 public:
  Calibrator(const ModelConfig& c, const std::vector<int64_t>& ids, const TensorView& embed, const Tensor& Pemb)
      : fwd_(c), T_(int64_t(ids.size())), d_(c.hidden_size), dp_(Pemb.cols()) {
    const size_t es = dtype_size(embed.dtype);
    R_.assign(size_t(T_ * d_), 0.0);
    std::vector<float> row(static_cast<size_t>(d_));
    for (int64_t t = 0; t < T_; ++t) {
      require(ids[t] >= 0 && ids[t] < c.vocab_size, "--calib-ids",
              "token id " + std::to_string(ids[t]) + " is outside the vocabulary", kExitUsage);
      convert_to_f32(embed.dtype, embed.data + size_t(ids[t] * d_) * es, row.data(), size_t(d_));
      std::copy(row.begin(), row.end(), R_.begin() + t * d_);
    }
    Rt_.assign(size_t(T_ * dp_), 0.0);
    add_write(R_, Pemb);
  }

  double kappa() const {
    double acc = 0;
    for (int64_t t = 0; t < T_; ++t) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < d_; ++k) a += R_[t * d_ + k] * R_[t * d_ + k];
      for (int64_t k = 0; k < dp_; ++k) b += Rt_[t * dp_ + k] * Rt_[t * dp_ + k];
      acc += std::sqrt(b / a);
    }
    return std::sqrt(double(d_) / double(dp_)) * acc / double(T_);
  }

  // The layer's attention (ffn) sublayer adds x_k to the plaintext stream and x_k Po (Pd) to the
  // obfuscated one.
  void attention(int64_t l, const LayerWeights& L, const Tensor& Po) { add(fwd_.attention(l, L, R_), Po); }
  void ffn(int64_t l, const LayerWeights& L, const Tensor& Pd) { add(fwd_.ffn(l, L, R_), Pd); }

 private:
  void add(const std::vector<double>& a, const Tensor& P) {
    for (size_t i = 0; i < R_.size(); ++i) R_[i] += a[i];
    add_write(a, P);
  }
  void add_write(const std::vector<double>& a, const Tensor& P) {  // Rt += a P
    const std::vector<double> P64(P.data.begin(), P.data.end());
    linalg::gemm(false, false, T_, dp_, d_, 1.0, a.data(), d_, P64.data(), dp_, 1.0, Rt_.data(), dp_);
  }

  LayerForward fwd_;
  int64_t T_, d_, dp_;
  std::vector<double> R_, Rt_;  // [T, d], [T, d']
};

}  // namespace

namespace {

// A sparse layer's FFN, written in declare_outputs' order: the router (rows permuted by Z_router,
// then read through Q like any reader), then for each slot s the plaintext expert Z_router^-1(s)
// with its own channel keys, readers through their own Q instances, down through the shared Pd.
// One expert in memory at a time.
void obfuscate_moe_ffn(const HFModel& plain, const Seed& seed, int64_t l, const std::vector<float>& ffn_norm,
                       const obf::KeyMatrices& K, const Tensor& Pd, double scale_range, bool router_norm,
                       const std::function<void(const std::string&, Tensor)>& put) {
  using layout::Role;
  const ModelConfig& c = plain.config();
  const std::string ls = "layer/" + std::to_string(l);
  const obf::MoeKeys MK = obf::draw_moe_keys(seed, l, c.num_experts, c.moe_intermediate_size, scale_range);
  Tensor router = obf::read_residual(
      obf::permute_router(load_and_release(plain, layout::hf_name(c, Role::Router, l)), MK.expert_slot), ffn_norm,
      mat_f32(K.Q(ls + "/router")));
  if (router_norm) obf::normalise_rows(router);
  put(layout::hf_name(c, Role::Router, l), std::move(router));
  const std::vector<int64_t> owner = invert_permutation(MK.expert_slot);  // slot -> plaintext expert
  for (int64_t s = 0; s < c.num_experts; ++s) {
    const int64_t e = owner[size_t(s)];
    auto X = [&](Role r) { return load_and_release(plain, layout::hf_name(c, r, l, e)); };
    obf::FfnHF S = obf::transform_ffn_channels(obf::FfnHF{X(Role::ExpertGate), X(Role::ExpertUp), X(Role::ExpertDown)},
                                               MK.experts[size_t(e)]);
    const std::string es = ls + "/expert/" + std::to_string(e);
    // The double Q instance dies inside, before the GEMM that uses its f32 copy.
    auto reader_key = [&](const char* role) { return mat_f32(K.Q(es + role)); };
    put(layout::hf_name(c, Role::ExpertGate, l, s), obf::read_residual(std::move(S.gate), ffn_norm, reader_key("/gate")));
    put(layout::hf_name(c, Role::ExpertUp, l, s), obf::read_residual(std::move(S.up), ffn_norm, reader_key("/up")));
    put(layout::hf_name(c, Role::ExpertDown, l, s), obf::write_residual(S.down, Pd));
  }
}

// What the write-behind queue may hold back: one large tensor of a 7B layer is about 0.2 GB, so
// this keeps the computation one tensor ahead of the disk without growing the peak by a layer.
constexpr size_t kWriteBehindBytes = size_t(256) << 20;

// Large blocks from the heap, and freed memory kept for reuse: every layer allocates tensors of
// the same sizes again, and a fresh mmap'd block costs a page fault and a kernel zero-fill per
// page (the largest non-GEMM cost in a profile of this executor). Process-wide; the peak stays
// one layer's working set because the same sizes recur.
void keep_freed_memory() {
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

}  // namespace

ObfuscateResult obfuscate_model(const std::string& model_dir, const Seed& seed, const std::string& out_dir,
                                const ObfuscateOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  keep_freed_memory();
  const ObfuscationParams& P = opt.params;
  HFModel plain(model_dir);
  const ModelConfig& c = plain.config();
  const bool sharded = opt.shard_count > 0;
  require(!sharded || (opt.shard_index >= 0 && opt.shard_index < opt.shard_count), "--shard",
          "index must be in [0, N)", kExitUsage);
  const bool noise_in_checkpoint = check_obfuscatable(plain, seed, opt, model_dir);
  const double emb_alpha = noise_in_checkpoint ? 0.0 : P.alpha_e, head_alpha = noise_in_checkpoint ? 0.0 : P.alpha_h;
  const DType out_dtype = output_dtype(plain, opt);
  const std::string torch_dtype = dtype_torch_name(out_dtype);
  if (!sharded) refuse_existing(out_dir, opt.force);

  const int64_t n = c.vocab_size, d = c.hidden_size, L = c.num_hidden_layers, dh = c.head_dim;
  const int64_t m = c.num_attention_heads, mkv = c.num_key_value_heads, ff = c.intermediate_size;
  check_copies(c, opt, model_dir);
  const VocabMap vm(seed, n, opt.copies);
  const int64_t np = vm.size();
  const auto inv_freq = obf::rope_inv_freq(c);
  obf::KeyMatrices K(seed, d, P.expansion, P.lambda, P.keymat);
  const int64_t dp = K.dprime();
  const std::vector<OutTensor> outs = declare_outputs(c, dp, out_dtype, np);
  // Steps this run computes; a shard only keeps the kappa bookkeeping of the others.
  const auto [first, last] = sharded ? shard_steps(outs, L + 2, opt.shard_index, opt.shard_count)
                                     : std::pair<int64_t, int64_t>{0, L + 2};
  auto runs = [&, first = first, last = last](int64_t step) { return step >= first && step < last; };

  std::unique_ptr<AtomicDir> out;
  std::unique_ptr<SafetensorsWriter> w;
  std::unique_ptr<PartWriter> part;
  if (sharded) {
    std::error_code ec;
    fs::create_directories(parts_dir(out_dir), ec);
    if (ec) throw Error(parts_dir(out_dir), "cannot create directory: " + ec.message(), kExitError);
    part = std::make_unique<PartWriter>(parts_dir(out_dir), opt.shard_index, opt.shard_count, opt.force);
  } else {
    out = std::make_unique<AtomicDir>(out_dir, opt.force);
    w = std::make_unique<SafetensorsWriter>(out->temp_path(), opt.max_shard_bytes);
    for (const auto& o : outs) w->add(o.spec);
  }
  // Tensors are written behind the computation, in the order they are put (see write_behind.h).
  WriteBehind wb(
      [&](const std::string& name, const float* p, size_t numel) {
        if (part) part->put(name, out_dtype, p, numel);
        else w->write_f32(name, p, numel);
      },
      kWriteBehindBytes);
  auto put = [&](const std::string& name, Tensor t) { wb.push(name, std::move(t.data)); };
  auto put_vec = [&](const std::string& name, std::vector<float> v) { wb.push(name, std::move(v)); };

  ObfuscateResult res;
  std::vector<double> all_kappas;  // every norm's kappa up to here; res.kappas: this run's steps
  auto note_kappa = [&](int64_t step, double k) {
    all_kappas.push_back(k);
    if (runs(step)) res.kappas.push_back(k);
  };
  Progress prog("obfuscate", uint64_t(last - first), "steps");

  // Writers seen so far (for the Gaussian kappa: E||x~||^2 / E||x||^2 = mean_k ||P_k||_F^2 / d
  // for independent equal-variance Gaussian contributions x_k).
  double writer_fro = 0;
  int64_t writers = 0;
  std::unique_ptr<Calibrator> calib;
  auto kappa_now = [&]() {
    if (P.keymat == KeymatVariant::ExactNorm) return 1.0;  // ||xP|| = sqrt(d'/d) ||x|| exactly
    if (calib) return calib->kappa();
    return std::sqrt(writer_fro / double(writers) / double(dp));
  };
  // A step this run skips still counts its writer for the later kappas.
  const bool need_fro = P.keymat != KeymatVariant::ExactNorm;
  auto count_writer = [&](const std::string& role) {
    if (need_fro) writer_fro += fro2(mat_f32(K.P(role)));
    ++writers;
  };

  // Embedding.
  if (!runs(0)) {
    count_writer("emb");
  } else {
    Tensor Pemb = mat_f32(K.P("emb"));
    writer_fro += fro2(Pemb);
    ++writers;
    const TensorView& ev = plain.weights().get(layout::hf_name(c, layout::Role::Embedding));
    if (P.kappa == KappaMode::Calibrated) calib = std::make_unique<Calibrator>(c, opt.calib_ids, ev, Pemb);
    RngStream noise(seed, "noise/embed");
    auto copy_noise = [&seed](int64_t copy) { return RngStream(seed, "noise/embed/copy/" + std::to_string(copy)); };
    put(layout::hf_name(c, layout::Role::Embedding), obf::transform_vocab_matrix(n, d, mapped_rows(ev), vm, emb_alpha, P.noise_scale,
                                                           noise, copy_noise, {}, Pemb, false));
    prog.advance();
  }

  obf::AttnKeyOptions ako;
  ako.beta = P.beta;
  ako.gamma = P.gamma;
  ako.scale_range = P.head_scale_range;
  ako.per_group_perm = P.per_group_perm;
  ako.value_cond = P.value_cond;
  ako.qk_norm = c.qk_norm;
  for (int64_t l = 0; l < L; ++l) {
    const std::string ls = "layer/" + std::to_string(l);
    if (!runs(1 + l)) {
      note_kappa(1 + l, kappa_now());
      count_writer(ls + "/o");
      note_kappa(1 + l, kappa_now());
      count_writer(ls + "/down");
      continue;
    }
    if (runs(2 + l)) prefetch_step(plain, outs, 2 + l);  // the next layer, read while this one computes
    using layout::Role;
    auto name = [&](Role r) { return layout::hf_name(c, r, l); };
    auto T = [&](Role r) { return load_and_release(plain, name(r)); };
    // A reader's Q in f32; the double instance dies inside, before the GEMM that uses it.
    auto reader_key = [&](const char* role) { return mat_f32(K.Q(ls + role)); };
    // Attention.
    const double k_in = kappa_now();
    note_kappa(1 + l, k_in);
    put_vec(name(Role::AttnNorm), std::vector<float>(static_cast<size_t>(dp), float(k_in)));
    // The layer in the engine's structure (HF layout), so that the calibrator runs the engine's
    // forward on it; the transforms then take its tensors over.
    LayerWeights LW;
    LW.attn_norm = T(Role::AttnNorm);
    LW.wq = T(Role::Query);
    LW.wk = T(Role::Key);
    LW.wv = T(Role::Value);
    LW.wo = T(Role::Output);
    if (c.attention_bias) {
      LW.bq = T(Role::QueryBias);
      LW.bk = T(Role::KeyBias);
      LW.bv = T(Role::ValueBias);
    }
    if (c.qk_norm) {
      LW.q_norm = T(Role::QNorm);
      LW.k_norm = T(Role::KNorm);
    }
    if (c.o_bias()) LW.bo = T(Role::OutputBias);
    Tensor Po = mat_f32(K.P(ls + "/o"));
    if (calib) calib->attention(l, LW, Po);
    const Tensor attn_norm = std::move(LW.attn_norm), o_bias = std::move(LW.bo);
    obf::AttnHF A{std::move(LW.wq),     std::move(LW.wk), std::move(LW.wv),     std::move(LW.wo),
                  std::move(LW.bq),     std::move(LW.bk), std::move(LW.bv),     std::move(LW.q_norm),
                  std::move(LW.k_norm)};
    writer_fro += fro2(Po);
    ++writers;
    {
      obf::AttnKeys AK = obf::draw_attn_keys(seed, l, m, mkv, dh, inv_freq, ako);
      obf::AttnHF S = obf::transform_attention_heads(A, AK, dh);
      A = obf::AttnHF();  // release the plaintext copies early
      const auto wn = as_vec(attn_norm);
      put(name(Role::Query), obf::read_residual(std::move(S.q), wn, reader_key("/q")));
      put(name(Role::Key), obf::read_residual(std::move(S.k), wn, reader_key("/k")));
      put(name(Role::Value), obf::read_residual(std::move(S.v), wn, reader_key("/v")));
      if (c.attention_bias) {
        put(name(Role::QueryBias), S.bq);
        put(name(Role::KeyBias), S.bk);
        put(name(Role::ValueBias), S.bv);
      }
      if (c.qk_norm) {
        put(name(Role::QNorm), S.q_norm);
        put(name(Role::KNorm), S.k_norm);
      }
      put(name(Role::Output), obf::write_residual(S.o, Po));
      if (c.o_bias()) {
        Tensor bo({1, d});
        bo.data = o_bias.data;
        Tensor r({1, dp});
        linalg::gemm(false, false, 1, int(dp), int(d), 1.0f, bo.ptr(), int(d), Po.ptr(),
                    int(dp), 0.0f, r.ptr(), int(dp));
        put(name(Role::OutputBias), r);
      }
    }
    // FFN.
    const double k_post = kappa_now();
    note_kappa(1 + l, k_post);
    put_vec(name(Role::FfnNorm), std::vector<float>(static_cast<size_t>(dp), float(k_post)));
    Tensor ffn_norm = T(Role::FfnNorm);
    if (c.is_moe_layer(l)) {
      Tensor Pd = mat_f32(K.P(ls + "/down"));  // every expert writes through the layer's one map
      writer_fro += fro2(Pd);
      ++writers;
      obfuscate_moe_ffn(plain, seed, l, as_vec(ffn_norm), K, Pd, P.ffn_scale_range, P.router_norm, put);
      prog.advance();
      continue;
    }
    LW.ffn_norm = std::move(ffn_norm);
    LW.w_gate = T(Role::Gate);
    LW.w_up = T(Role::Up);
    LW.w_down = T(Role::Down);
    Tensor Pd = mat_f32(K.P(ls + "/down"));
    if (calib) calib->ffn(l, LW, Pd);
    ffn_norm = std::move(LW.ffn_norm);
    obf::FfnHF F{std::move(LW.w_gate), std::move(LW.w_up), std::move(LW.w_down)};
    writer_fro += fro2(Pd);
    ++writers;
    {
      obf::FfnHF S = obf::transform_ffn_channels(std::move(F), obf::draw_ffn_keys(seed, l, ff, P.ffn_scale_range));
      F = obf::FfnHF();
      const auto wn = as_vec(ffn_norm);
      put(name(Role::Gate), obf::read_residual(std::move(S.gate), wn, reader_key("/gate")));
      put(name(Role::Up), obf::read_residual(std::move(S.up), wn, reader_key("/up")));
      put(name(Role::Down), obf::write_residual(S.down, Pd));
    }
    prog.advance();
  }

  // Final norm and head.
  if (runs(L + 1)) {
    const double k_f = kappa_now();
    note_kappa(L + 1, k_f);
    put_vec(layout::hf_name(c, layout::Role::FinalNorm), std::vector<float>(static_cast<size_t>(dp), float(k_f)));
    calib.reset();
    const TensorView& hv =
        plain.weights().get(c.tie_word_embeddings ? layout::hf_name(c, layout::Role::Embedding) : layout::hf_name(c, layout::Role::Head));
    const auto wf = as_vec(plain.tensor_f32(layout::hf_name(c, layout::Role::FinalNorm)));
    RngStream noise(seed, "noise/head");
    auto copy_noise = [&seed](int64_t copy) { return RngStream(seed, "noise/head/copy/" + std::to_string(copy)); };
    put(layout::hf_name(c, layout::Role::Head), obf::transform_vocab_matrix(n, d, mapped_rows(hv), vm, head_alpha, P.noise_scale,
                                                             noise, copy_noise, wf, mat_f32(K.Q("head")), true));
    prog.advance();
  }
  wb.drain();
  prog.finish();

  if (sharded) {
    nlohmann::json info = part_identity(c, seed, opt, dp, out_dtype);
    info["shard"] = opt.shard_index;
    info["of"] = opt.shard_count;
    info["steps"] = {first, last};
    info["kappas"] = res.kappas;
    part->commit(info);
    res.vocab_size = n;
    res.hidden = d;
    res.obf_hidden = dp;
    res.seconds = res.seconds_transform =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
  }
  w->finish();
  finish_checkpoint(model_dir, plain, vm, dp, torch_dtype, *out, out_dir, opt, t0, res);
  return res;
}

ObfuscationRecord ObfuscateResult::key_record() const {
  ObfuscationRecord rec;
  rec.plain_fingerprint = plain_fingerprint;
  rec.obf_fingerprint = obf_fingerprint;
  rec.vocab_size = vocab_size;
  rec.params = record;
  rec.extra = nlohmann::json::object();
  if (obf_eos) rec.extra["obf_eos_token_id"] = *obf_eos;
  if (obf_bos) rec.extra["obf_bos_token_id"] = *obf_bos;
  rec.extra["eos_policy"] = "published";
  rec.copies = copies;
  return rec;
}

}  // namespace aloepri
