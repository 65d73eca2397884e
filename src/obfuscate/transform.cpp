// Per-component transforms (method.md section 5); see obf_transform.h.
#include <cmath>
#include <memory>
#include <numeric>

#include "aloepri/error.h"
#include "aloepri/linalg.h"
#include "aloepri/obf_transform.h"

namespace aloepri::obf {

static std::string L(int64_t layer) { return "layer/" + std::to_string(layer); }

static double log_uniform(RngStream& rng, double range) {
  if (range <= 1.0) return 1.0;
  const double lr = std::log(range);
  return std::exp((2 * rng.uniform() - 1) * lr);
}

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
    const std::string base = L(layer) + "/attn/qk-shared";
    RngStream qt(seed, base + "/quarter"), sc(seed, base + "/scale"), bp(seed, base + "/blockperm");
    shared.quarter.resize(size_t(M));
    shared.angle.resize(size_t(M));
    shared.scale.resize(size_t(M));
    for (int64_t p = 0; p < M; ++p) {
      shared.quarter[p] = int(qt.below(4));
      shared.angle[p] = shared.quarter[p] * (M_PI / 2);
    }
    for (int64_t p = 0; p < M; ++p) shared.scale[p] = log_uniform(sc, opt.scale_range);
    shared.pair_slot = block_perm(opt.beta, opt.gamma, inv_freq, bp);
  }
  for (int64_t j = 0; j < mkv; ++j) {
    const std::string base = L(layer) + "/attn/kv" + std::to_string(j);
    HeadKeys hk;
    RngStream vm(seed, base + "/vmap");
    if (opt.qk_norm) {
      hk = shared;
    } else {
      RngStream rot(seed, base + "/rotation"), sc(seed, base + "/scale"), bp(seed, base + "/blockperm");
      hk.angle.resize(size_t(M));
      hk.scale.resize(size_t(M));
      for (int64_t p = 0; p < M; ++p) hk.angle[p] = 2 * M_PI * rot.uniform();
      for (int64_t p = 0; p < M; ++p) hk.scale[p] = log_uniform(sc, opt.scale_range);
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
  RngStream kvp(seed, L(layer) + "/attn/kv_perm");
  K.kv_slot = kvp.permutation(mkv);
  if (opt.per_group_perm) {
    for (int64_t j = 0; j < mkv; ++j) {
      RngStream gp(seed, L(layer) + "/attn/group_perm/" + std::to_string(j));
      K.group_slot.push_back(gp.permutation(g));
    }
  } else {
    RngStream gp(seed, L(layer) + "/attn/group_perm");
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
static FfnKeys ffn_keys_at(const Seed& seed, const std::string& base, int64_t ff, double scale_range) {
  FfnKeys K;
  RngStream p(seed, base + "/ffn/perm"), s(seed, base + "/ffn/scale");
  K.slot = p.permutation(ff);
  K.scale.resize(size_t(ff));
  for (auto& x : K.scale) x = log_uniform(s, scale_range);
  return K;
}

FfnKeys draw_ffn_keys(const Seed& seed, int64_t layer, int64_t ff, double scale_range) {
  return ffn_keys_at(seed, L(layer), ff, scale_range);
}

MoeKeys draw_moe_keys(const Seed& seed, int64_t layer, int64_t n_experts, int64_t expert_ff, double scale_range) {
  require(n_experts > 0 && expert_ff > 0, "moe", "needs experts of positive width");
  MoeKeys K;
  RngStream zr(seed, L(layer) + "/router/perm");
  K.expert_slot = zr.permutation(n_experts);
  for (int64_t e = 0; e < n_experts; ++e)
    K.experts.push_back(ffn_keys_at(seed, L(layer) + "/expert/" + std::to_string(e), expert_ff, scale_range));
  return K;
}

void normalise_rows(Tensor& w) {
  const int64_t rows = w.rows(), cols = w.cols();
  for (int64_t r = 0; r < rows; ++r) {
    float* x = w.ptr() + r * cols;
    double ss = 0;
    for (int64_t k = 0; k < cols; ++k) ss += double(x[k]) * x[k];
    require(ss > 0, "router", "row " + std::to_string(r) + " is zero and cannot be normalised");
    const double inv = 1.0 / std::sqrt(ss);
    for (int64_t k = 0; k < cols; ++k) x[k] = float(x[k] * inv);
  }
}

Tensor permute_router(const Tensor& router, const std::vector<int64_t>& slot) {
  const int64_t E = router.rows(), d = router.cols();
  require(int64_t(slot.size()) == E, "router", "has " + std::to_string(E) + " expert rows, the permutation " +
                                                   std::to_string(slot.size()) + " entries");
  Tensor out(router.shape);
  for (int64_t e = 0; e < E; ++e) std::copy_n(router.ptr() + e * d, d, out.ptr() + slot[e] * d);
  return out;
}

// Moves row c of a [rows, d] matrix to row slot[c], in place (cycle by cycle, one spare row),
// so a layer's FFN is never held twice.
static void permute_rows_in_place(Tensor& t, const std::vector<int64_t>& slot) {
  const int64_t rows = t.rows(), d = t.cols();
  std::vector<char> done(static_cast<size_t>(rows), 0);
  std::vector<float> carry(static_cast<size_t>(d)), next(static_cast<size_t>(d));
  for (int64_t start = 0; start < rows; ++start) {
    if (done[size_t(start)]) continue;
    // Follow start -> slot[start] -> ...: each row goes where slot sends it.
    std::copy(t.ptr() + start * d, t.ptr() + (start + 1) * d, carry.begin());
    int64_t c = start;
    while (!done[size_t(c)]) {
      done[size_t(c)] = 1;
      const int64_t s = slot[size_t(c)];
      std::copy(t.ptr() + s * d, t.ptr() + (s + 1) * d, next.begin());
      std::copy(carry.begin(), carry.end(), t.ptr() + s * d);
      std::swap(carry, next);
      c = s;
    }
  }
}

FfnHF transform_ffn_channels(FfnHF f, const FfnKeys& K) {
  const int64_t ff = f.gate.rows(), d = f.gate.cols();
  require(f.up.rows() == ff && f.up.cols() == d && f.down.rows() == d && f.down.cols() == ff &&
              int64_t(K.slot.size()) == ff,
          "ffn", "projection shapes do not match");
  std::vector<char> seen(static_cast<size_t>(ff), 0);
  for (int64_t c = 0; c < ff; ++c) {
    const int64_t s = K.slot[size_t(c)];
    require(s >= 0 && s < ff && !seen[size_t(s)], "ffn", "channel keys are not a permutation", kExitError);
    seen[size_t(s)] = 1;
  }
  for (int64_t c = 0; c < ff; ++c) {
    const float sc = float(K.scale[size_t(c)]);
    float* row = f.up.ptr() + c * d;
    for (int64_t k = 0; k < d; ++k) row[k] = row[k] * sc;
  }
  permute_rows_in_place(f.gate, K.slot);
  permute_rows_in_place(f.up, K.slot);
  std::vector<float> tmp(static_cast<size_t>(ff));
  for (int64_t r = 0; r < d; ++r) {
    float* row = f.down.ptr() + r * ff;
    for (int64_t c = 0; c < ff; ++c) tmp[size_t(K.slot[size_t(c)])] = float(double(row[c]) / K.scale[size_t(c)]);
    std::copy(tmp.begin(), tmp.end(), row);
  }
  return f;
}

Tensor read_residual(Tensor w, const std::vector<float>& norm_w, const Tensor& Qf) {
  const int64_t out = w.rows(), d = w.cols(), dp = Qf.rows();
  require(Qf.cols() == d, "read_residual", "Q has " + std::to_string(Qf.cols()) + " columns, weight has " +
                                               std::to_string(d), kExitError);
  if (!norm_w.empty()) {
    require(int64_t(norm_w.size()) == d, "read_residual", "norm weight size mismatch", kExitError);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t k = 0; k < d; ++k) w.ptr()[r * d + k] *= norm_w[k];
  }
  Tensor res({out, dp});
  linalg::gemm(false, true, int(out), int(dp), int(d), 1.0f, w.ptr(),
              int(d), Qf.ptr(), int(d), 0.0f, res.ptr(), int(dp));
  return res;
}

Tensor write_residual(const Tensor& w, const Tensor& Pf) {
  const int64_t d = w.rows(), in = w.cols(), dp = Pf.cols();
  require(Pf.rows() == d, "write_residual", "P has " + std::to_string(Pf.rows()) + " rows, weight has " +
                                                std::to_string(d), kExitError);
  Tensor res({dp, in});
  linalg::gemm(true, false, int(dp), int(in), int(d), 1.0f, Pf.ptr(), int(dp),
              w.ptr(), int(in), 0.0f, res.ptr(), int(in));
  return res;
}

static double row_std(const float* r, int64_t d) {
  double s = 0, s2 = 0;
  for (int64_t k = 0; k < d; ++k) s += r[k];
  const double mean = s / double(d);
  for (int64_t k = 0; k < d; ++k) s2 += (r[k] - mean) * (r[k] - mean);
  return std::sqrt(s2 / double(d));
}

Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const std::vector<int64_t>& tau,
                              double alpha, NoiseScale ns, RngStream& rng, const std::vector<float>& col_scale,
                              const Tensor& M, bool reader) {
  require(int64_t(tau.size()) == n, "vocabulary", "tau has " + std::to_string(tau.size()) +
                                                      " entries, the matrix " + std::to_string(n) + " rows",
          kExitError);
  return transform_vocab_matrix(n, d, fetch, VocabMap::from_tau(tau), alpha, ns, rng, nullptr, col_scale, M, reader);
}

Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const VocabMap& map, double alpha,
                              NoiseScale ns, RngStream& rng, const CopyStream& copy_stream,
                              const std::vector<float>& col_scale, const Tensor& M, bool reader) {
  // Shapes: plaintext rows [n, d]; M [d, d'] (writer) or [d', d] (reader); output [n', d'].
  require(map.plain_size() == n, "vocabulary", "the id map covers " + std::to_string(map.plain_size()) +
                                                   " ids, the matrix has " + std::to_string(n) + " rows",
          kExitError);
  const int64_t np = map.size();
  const int64_t dp = reader ? M.rows() : M.cols();
  require((reader ? M.cols() : M.rows()) == d, "vocabulary", "key matrix does not match the hidden size", kExitError);
  require(col_scale.empty() || int64_t(col_scale.size()) == d, "vocabulary", "norm weight size mismatch", kExitError);
  require(!map.homophonic() || alpha == 0 || copy_stream, "vocabulary", "noisy copies need their noise streams",
          kExitError);
  constexpr int64_t kChunk = 2048;
  std::vector<float> buf(static_cast<size_t>(std::min(n, kChunk) * d));
  // Global std: one streaming pass (mean, then squared deviations) over the plaintext rows in
  // order (copies do not change the scale: they are the same rows).
  double gstd = 0;
  if (alpha != 0 && ns == NoiseScale::Global) {
    double sum = 0, s2 = 0;
    for (int pass = 0; pass < 2; ++pass) {
      const double mean = sum / double(n * d);
      for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
        const int64_t m = std::min(kChunk, n - r0);
        fetch(r0, m, buf.data());
        for (int64_t i = 0; i < m * d; ++i) {
          if (pass == 0) sum += buf[i];
          else s2 += (buf[i] - mean) * (buf[i] - mean);
        }
      }
    }
    gstd = std::sqrt(s2 / double(n * d));
  }
  // Copy c >= 1 draws from its own stream, opened when first needed.
  std::vector<std::unique_ptr<RngStream>> copy_rng;
  auto stream_for = [&](int64_t c) -> RngStream& {
    if (size_t(c) >= copy_rng.size()) copy_rng.resize(size_t(c) + 1);
    if (!copy_rng[size_t(c)]) copy_rng[size_t(c)] = std::make_unique<RngStream>(copy_stream(c));
    return *copy_rng[size_t(c)];
  };
  Tensor out({np, dp});
  std::vector<float> res;
  std::vector<float> rows;          // [rows of this chunk, d]: every copy's noisy, scaled row
  std::vector<int64_t> dest;        // output row of each
  std::vector<float> base(static_cast<size_t>(d));
  constexpr int64_t kNoiseRows = 256;  // noise buffer of copy 0: kNoiseRows x d doubles
  std::vector<double> z(alpha != 0 ? static_cast<size_t>(std::min(n, kNoiseRows) * d) : 0);
  std::vector<double> zc(alpha != 0 ? size_t(d) : 0);
  for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
    const int64_t m = std::min(kChunk, n - r0);
    fetch(r0, m, buf.data());
    rows.clear();
    dest.clear();
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = r0 + i;
      const float* row = buf.data() + i * d;
      std::copy(row, row + d, base.begin());  // the noise-free row (per-row sigma is taken from it)
      const double sigma = alpha == 0 ? 0.0 : alpha * (ns == NoiseScale::Global ? gstd : row_std(row, d));
      // Noise of copy 0 in plaintext row order (the stream's draws kNoiseRows rows at a time, in
      // bulk; bulk draws equal successive single draws, so this is the historical stream).
      if (alpha != 0 && i % kNoiseRows == 0) rng.normals(z.data(), size_t(std::min(kNoiseRows, m - i) * d));
      const int64_t k = map.copies(t);
      const bool same = alpha == 0;  // without noise one product serves every copy
      for (int64_t c = 0; c < (same ? 1 : k); ++c) {
        const size_t off = rows.size();
        rows.insert(rows.end(), base.begin(), base.end());
        float* r = rows.data() + off;
        if (alpha != 0) {
          const double* zr = z.data() + (i % kNoiseRows) * d;
          if (c > 0) {
            stream_for(c).normals(zc.data(), size_t(d));
            zr = zc.data();
          }
          for (int64_t j = 0; j < d; ++j) r[j] = float(double(r[j]) + sigma * zr[j]);
        }
        if (!col_scale.empty())
          for (int64_t j = 0; j < d; ++j) r[j] *= col_scale[j];
        dest.push_back(same ? -1 - t : map.id(t, c));  // -1 - t: every copy of t
      }
    }
    const int64_t rm = int64_t(dest.size());
    res.resize(size_t(rm * dp));
    // Writer (embedding): rows P; reader (head): rows Q^T.
    linalg::gemm(false, reader, int(rm), int(dp), int(d), 1.0f, rows.data(), int(d), M.ptr(), reader ? int(d) : int(dp),
                 0.0f, res.data(), int(dp));
    for (int64_t i = 0; i < rm; ++i) {
      const float* src = res.data() + i * dp;
      if (dest[size_t(i)] >= 0) {
        std::copy(src, src + dp, out.ptr() + dest[size_t(i)] * dp);
      } else {
        const int64_t t = -1 - dest[size_t(i)];
        for (int64_t c = 0; c < map.copies(t); ++c) std::copy(src, src + dp, out.ptr() + map.id(t, c) * dp);
      }
    }
  }
  return out;
}

static RowFetch tensor_rows(const Tensor& t) {
  return [&t](int64_t r0, int64_t m, float* dst) {
    std::copy(t.ptr() + r0 * t.cols(), t.ptr() + (r0 + m) * t.cols(), dst);
  };
}

Tensor obfuscate_embedding(const Tensor& emb, const std::vector<int64_t>& tau, double alpha,
                           NoiseScale ns, RngStream& rng, const Tensor& Pf) {
  return transform_vocab_matrix(emb.rows(), emb.cols(), tensor_rows(emb), tau, alpha, ns, rng, {}, Pf, false);
}

Tensor obfuscate_head(const Tensor& head, const std::vector<int64_t>& tau, double alpha, NoiseScale ns,
                      RngStream& rng, const std::vector<float>& final_norm, const Tensor& Qf) {
  return transform_vocab_matrix(head.rows(), head.cols(), tensor_rows(head), tau, alpha, ns, rng, final_norm, Qf,
                                true);
}

}  // namespace aloepri::obf
