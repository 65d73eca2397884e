// Attention transforms (method.md section 5): per-head keys, RoPE-pair maps, value/output maps, head
// permutations; see obfuscate/attention.h.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/obfuscate/attention.h"
#include "draw.h"

namespace aloepri::obf {

AttnKeys draw_attn_keys(const Seed& seed, int64_t layer, int64_t m, int64_t mkv, int64_t dh,
                        const std::vector<double>& inv_freq, const AttnKeyOptions& opt) {
  require(mkv > 0 && m % mkv == 0, "attention", "num_attention_heads must be a multiple of num_key_value_heads");
  require(dh % 2 == 0 && int64_t(inv_freq.size()) == dh / 2, "attention", "head_dim must be even");
  require(opt.value_cond == 0 || opt.value_cond >= 1, "--value-cond",
          "must be 0 (the report's Gaussian value map) or >= 1", kExitUsage);
  const int64_t M = dh / 2, g = m / mkv;
  AttnKeys K;
  K.group = g;
  HeadKeys shared;  // q/k-norm models: one rotation / scale / BlockPerm for every head
  if (opt.qk_norm) {
    const std::string base = detail::layer_stream(layer) + "/attn/qk-shared";
    RngStream qt(seed, base + "/quarter"), sc(seed, base + "/scale"), bp(seed, base + "/blockperm");
    shared.quarter.resize(size_t(M));
    shared.angle.resize(size_t(M));
    shared.scale.resize(size_t(M));
    for (int64_t p = 0; p < M; ++p) {
      shared.quarter[p] = int(qt.below(4));
      shared.angle[p] = shared.quarter[p] * (M_PI / 2);
    }
    for (int64_t p = 0; p < M; ++p) shared.scale[p] = detail::log_uniform(sc, opt.scale_range);
    shared.pair_slot = block_perm(opt.beta, opt.gamma, inv_freq, bp);
  }
  for (int64_t j = 0; j < mkv; ++j) {
    const std::string base = detail::layer_stream(layer) + "/attn/kv" + std::to_string(j);
    HeadKeys hk;
    RngStream vm(seed, base + "/vmap");
    if (opt.qk_norm) {
      hk = shared;
    } else {
      RngStream rot(seed, base + "/rotation"), sc(seed, base + "/scale"), bp(seed, base + "/blockperm");
      hk.angle.resize(size_t(M));
      hk.scale.resize(size_t(M));
      for (int64_t p = 0; p < M; ++p) hk.angle[p] = 2 * M_PI * rot.uniform();
      for (int64_t p = 0; p < M; ++p) hk.scale[p] = detail::log_uniform(sc, opt.scale_range);
      hk.pair_slot = block_perm(opt.beta, opt.gamma, inv_freq, bp);
    }
    if (opt.value_cond == 0) {
      // The report's draw, condition-checked: a badly conditioned U_j would amplify f32 rounding
      // through U U^-1.
      for (int attempt = 0;; ++attempt) {
        if (attempt == 1000) throw Error("attention", "could not draw a well-conditioned value map", kExitError);
        hk.U = gaussian(dh, dh, 1.0 / std::sqrt(double(dh)), vm);
        if (condition_number(hk.U) <= opt.max_cond_factor * double(dh)) break;
      }
      hk.Uinv = inverse(hk.U);
    } else {
      // cond(U_j) == value_cond exactly (issue 7: quantization noise of W_v U_j is amplified by
      // U_j^-1 W_o up to cond(U_j) times).
      RngStream vc(seed, base + "/vmap-cond");
      hk.U = conditioned_matrix(dh, opt.value_cond, vc, &hk.Uinv);
    }
    K.kv.push_back(std::move(hk));
  }
  RngStream kvp(seed, detail::layer_stream(layer) + "/attn/kv_perm");
  K.kv_slot = kvp.permutation(mkv);
  if (opt.per_group_perm) {
    for (int64_t j = 0; j < mkv; ++j) {
      RngStream gp(seed, detail::layer_stream(layer) + "/attn/group_perm/" + std::to_string(j));
      K.group_slot.push_back(gp.permutation(g));
    }
  } else {
    RngStream gp(seed, detail::layer_stream(layer) + "/attn/group_perm");
    auto p = gp.permutation(g);
    K.group_slot.assign(size_t(mkv), p);
  }
  return K;
}

Mat head_map(const HeadKeys& hk, int64_t dh, bool inverse_scale) {
  const int64_t M = dh / 2;
  Mat T(dh, dh);
  for (int64_t p = 0; p < M; ++p) {
    const double s = hk.scale.empty() ? 1.0 : inverse_scale ? 1.0 / hk.scale[p] : hk.scale[p];
    static constexpr double kCos[4] = {1, 0, -1, 0}, kSin[4] = {0, 1, 0, -1};
    const double cs = hk.quarter.empty() ? std::cos(hk.angle[p]) : kCos[hk.quarter[p] & 3];
    const double sn0 = hk.quarter.empty() ? std::sin(hk.angle[p]) : kSin[hk.quarter[p] & 3];
    const double c = cs * s, sn = sn0 * s;
    const int64_t o = hk.pair_slot[p];
    // (x R)[p] = x[p] cos - x[p+M] sin, (x R)[p+M] = x[p] sin + x[p+M] cos: multiplication of
    // the complex number x[p] + i x[p+M] by e^{i angle}, which commutes with RoPE.
    T(p, o) = c;
    T(p + M, o) = -sn;
    T(p, o + M) = sn;
    T(p + M, o + M) = c;
  }
  return T;
}

// rows_out[dst block] = T^T rows_in[src block] for a [*, d] HF weight (rows = outputs), i.e.
// new output o = sum_i T(i, o) old output i.
static void map_rows(const float* src, float* dst, const Mat& T, int64_t dh, int64_t d) {
  // dst (dh x d) = T^T (dh x dh) * src (dh x d), in f32 GEMM with a f32 copy of T.
  std::vector<float> Tf = to_f32(T);
  linalg::gemm(true, false, int(dh), int(d), int(dh), 1.0f, Tf.data(),
              int(dh), src, int(d), 0.0f, dst, int(d));
}

static void map_vec(const float* src, float* dst, const Mat& T, int64_t dh) {
  for (int64_t o = 0; o < dh; ++o) {
    double acc = 0;
    for (int64_t i = 0; i < dh; ++i) acc += T(i, o) * src[i];
    dst[o] = float(acc);
  }
}

// Gains after the signed permutation R Zb and the pair scale H of a q/k-norm layer. Output
// coordinate o of pair slot Zb(p) takes input coordinate p or p + M (swapped by an odd number of
// quarter turns; the sign of R does not touch a gain), times h_p for q and 1 / h_p for k:
// RMSNorm(x R Zb) (g' * .) = RMSNorm(x) (g * .) R H Zb, because a signed permutation keeps the RMS.
void qk_norm_gains(const float* gq, const float* gk, const HeadKeys& hk, int64_t dh, float* gq_out, float* gk_out) {
  const int64_t M = dh / 2;
  require(int64_t(hk.quarter.size()) == M && int64_t(hk.scale.size()) == M && int64_t(hk.pair_slot.size()) == M,
          "attention", "q/k-norm keys must give a quarter turn, a scale and a slot per pair");
  for (int64_t p = 0; p < M; ++p) {
    const int64_t o = hk.pair_slot[p];
    const bool swap = (hk.quarter[p] & 1) != 0;
    const int64_t src_lo = swap ? p + M : p, src_hi = swap ? p : p + M;
    const double h = hk.scale[p];
    gq_out[o] = float(double(gq[src_lo]) * h);
    gq_out[o + M] = float(double(gq[src_hi]) * h);
    gk_out[o] = float(double(gk[src_lo]) / h);
    gk_out[o + M] = float(double(gk[src_hi]) / h);
  }
}

AttnHF transform_attention_heads(const AttnHF& in, const AttnKeys& K, int64_t dh) {
  const int64_t mkv = int64_t(K.kv.size()), g = K.group, m = mkv * g;
  const int64_t d = in.q.cols();
  require(in.q.rows() == m * dh && in.k.rows() == mkv * dh && in.v.rows() == mkv * dh &&
              in.o.rows() == d && in.o.cols() == m * dh && in.k.cols() == d && in.v.cols() == d,
          "attention", "projection shapes do not match the head layout");
  AttnHF out;
  out.q = Tensor(in.q.shape);
  out.k = Tensor(in.k.shape);
  out.v = Tensor(in.v.shape);
  out.o = Tensor(in.o.shape);
  const bool bias = !in.bq.data.empty();
  if (bias) {
    out.bq = Tensor(in.bq.shape);
    out.bk = Tensor(in.bk.shape);
    out.bv = Tensor(in.bv.shape);
  }
  const bool qk_norm = !in.q_norm.data.empty();
  if (qk_norm) {
    require(in.q_norm.numel() == dh && in.k_norm.numel() == dh, "attention", "q_norm / k_norm must have head_dim entries");
    for (const HeadKeys& hk : K.kv)
      require(hk.quarter == K.kv[0].quarter && hk.scale == K.kv[0].scale && hk.pair_slot == K.kv[0].pair_slot,
              "attention", "q/k-norm models need one rotation, scale and BlockPerm for all heads (qk_norm keys)");
    out.q_norm = Tensor(in.q_norm.shape);
    out.k_norm = Tensor(in.k_norm.shape);
    qk_norm_gains(in.q_norm.ptr(), in.k_norm.ptr(), K.kv[0], dh, out.q_norm.ptr(), out.k_norm.ptr());
  }
  for (int64_t j = 0; j < mkv; ++j) {
    const HeadKeys& hk = K.kv[j];
    // With q/k norms the pair scale lives in the gains (a scale on the rows would be normalised
    // away): the rows get the signed permutation R Zb alone.
    HeadKeys unit;
    if (qk_norm) {
      unit = hk;
      unit.scale.clear();
    }
    const HeadKeys& rows = qk_norm ? unit : hk;
    const Mat Tq = head_map(rows, dh, false), Tk = head_map(rows, dh, true);
    const int64_t js = K.kv_slot[j];
    map_rows(in.k.ptr() + j * dh * d, out.k.ptr() + js * dh * d, Tk, dh, d);
    map_rows(in.v.ptr() + j * dh * d, out.v.ptr() + js * dh * d, hk.U, dh, d);
    if (bias) {
      map_vec(in.bk.ptr() + j * dh, out.bk.ptr() + js * dh, Tk, dh);
      map_vec(in.bv.ptr() + j * dh, out.bv.ptr() + js * dh, hk.U, dh);
    }
    // o columns of head i: new[:, o] = sum_c old[:, c] Uinv(o, c)  (W_o(i) -> U^-1 W_o(i)).
    std::vector<float> UinvT(size_t(dh * dh));
    for (int64_t a = 0; a < dh; ++a)
      for (int64_t b = 0; b < dh; ++b) UinvT[a * dh + b] = float(hk.Uinv(b, a));
    for (int64_t r = 0; r < g; ++r) {
      const int64_t i = j * g + r, is = K.q_slot(i);
      map_rows(in.q.ptr() + i * dh * d, out.q.ptr() + is * dh * d, Tq, dh, d);
      if (bias) map_vec(in.bq.ptr() + i * dh, out.bq.ptr() + is * dh, Tq, dh);
      // out.o[:, is block] = in.o[:, i block] * Uinv^T  (d x dh) with row stride m dh.
      linalg::gemm(false, false, int(d), int(dh), int(dh), 1.0f,
                  in.o.ptr() + i * dh, int(m * dh), UinvT.data(), int(dh), 0.0f,
                  out.o.ptr() + is * dh, int(m * dh));
    }
  }
  return out;
}

// One FFN's channel permutation and scales from the streams "<base>/ffn/perm", "<base>/ffn/scale".

}  // namespace aloepri::obf
