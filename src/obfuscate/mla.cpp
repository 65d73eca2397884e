// DeepSeek multi-head latent attention transforms (see mla.h for the algebra).
#include "aloepri/obfuscate/mla.h"

#include <cmath>

#include "aloepri/core/error.h"
#include "draw.h"

namespace aloepri::obf {

namespace {

// Rows [r0, r0 + M.rows) of W [rows, cols] replaced by op(M) times them (op: M^T when transM).
void left_mul_rows(Tensor& W, int64_t r0, const Mat& M, bool transM) {
  const int64_t n = M.rows, cols = W.cols();
  Mat B(n, cols);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < cols; ++k) B(i, k) = W.data[size_t((r0 + i) * cols + k)];
  const Mat Y = matmul(M, B, transM, false);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < cols; ++k) W.data[size_t((r0 + i) * cols + k)] = float(Y(i, k));
}

// W [rows, n] -> W diag(g) R diag(1/g'): the consumer of an RMSNorm output whose input got R (the
// norm's gain g folded in, the published gain g' divided out).
Tensor fold_latent(const Tensor& W, const std::vector<float>& g, const Mat& R, const std::vector<float>& gp) {
  const int64_t rows = W.rows(), n = W.cols();
  Mat B(rows, n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < n; ++k) B(r, k) = double(W.data[size_t(r * n + k)]) * double(g[size_t(k)]);
  const Mat Y = matmul(B, R);
  Tensor out({rows, n});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < n; ++k) out.data[size_t(r * n + k)] = float(Y(r, k) / double(gp[size_t(k)]));
  return out;
}

// The gain published for a latent norm: the plaintext one (it is public anyway), or ones if a
// zero entry could not be divided out.
std::vector<float> published_gain(const Tensor& g) {
  for (float x : g.data)
    if (!(std::fabs(x) > 0)) return std::vector<float>(g.data.size(), 1.0f);
  return g.data;
}

// The 2x2 pair map M_p = s [[cos, sin], [-sin, cos]] (row vectors: y = x M_p) applied to the two
// weight rows of a pair: q side W' = M^T W, k side W' = M^-1 W.
void pair_rows(Tensor& W, int64_t r0, double angle, double scale, bool key_side) {
  const double c = std::cos(angle), s = std::sin(angle);
  double a00, a01, a10, a11;  // the 2x2 left factor
  if (!key_side) {            // M^T = scale [[c, -s], [s, c]]
    a00 = scale * c, a01 = -scale * s, a10 = scale * s, a11 = scale * c;
  } else {                    // M^-1 = (1/scale) [[c, -s], [s, c]]
    a00 = c / scale, a01 = -s / scale, a10 = s / scale, a11 = c / scale;
  }
  const int64_t cols = W.cols();
  float* x = W.ptr() + r0 * cols;
  float* y = x + cols;
  for (int64_t k = 0; k < cols; ++k) {
    const double u = x[k], v = y[k];
    x[k] = float(a00 * u + a01 * v);
    y[k] = float(a10 * u + a11 * v);
  }
}

}  // namespace

MlaKeys draw_mla_keys(const Seed& seed, int64_t layer, const ModelConfig& c, double cond, double scale_range) {
  require(c.mla(), "mla", "not a multi-head latent attention model");
  require(cond >= 1, "mla", "the nope/value maps need a condition number >= 1", kExitUsage);
  const std::string ls = detail::layer_stream(layer) + "/mla";
  MlaKeys K;
  if (c.q_lora_rank > 0) {
    RngStream r(seed, ls + "/q-latent");
    K.Rq = haar_orthogonal(c.q_lora_rank, r);
  }
  {
    RngStream r(seed, ls + "/kv-latent");
    K.Rkv = haar_orthogonal(c.kv_lora_rank, r);
  }
  const int64_t H = c.num_attention_heads;
  for (int64_t h = 0; h < H; ++h) {
    const std::string hs = ls + "/head" + std::to_string(h);
    RngStream rn(seed, hs + "/nope"), rv(seed, hs + "/vmap");
    Mat inv;
    K.A.push_back(conditioned_matrix(c.qk_nope_head_dim, cond, rn, &inv));
    K.Ainv.push_back(std::move(inv));
    K.U.push_back(conditioned_matrix(c.v_head_dim, cond, rv, &inv));
    K.Uinv.push_back(std::move(inv));
  }
  RngStream rr(seed, ls + "/rope");
  for (int64_t p = 0; p < c.qk_rope_head_dim / 2; ++p) {
    K.angle.push_back(2 * M_PI * rr.uniform());
    K.scale.push_back(detail::log_uniform(rr, scale_range));
  }
  RngStream hp(seed, ls + "/head_perm");
  K.head_slot = hp.permutation(H);
  return K;
}

MlaHF transform_mla(MlaHF in, const MlaKeys& K, const ModelConfig& c) {
  const int64_t H = c.num_attention_heads, dh = c.head_dim, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const int64_t dv = c.v_head_dim, kvl = c.kv_lora_rank, ql = c.q_lora_rank, kvb = nope + dv;
  Tensor& Wq = ql > 0 ? in.q_b : in.q;
  require(Wq.rows() == H * dh && in.kv_b.rows() == H * kvb && in.kv_b.cols() == kvl && in.o.cols() == H * dv &&
              in.kv_a.rows() == kvl + rope,
          "mla", "block shapes do not match the config");
  MlaHF out;
  // Latents.
  if (ql > 0) {
    left_mul_rows(in.q_a, 0, K.Rq, /*transM=*/true);
    const std::vector<float> gp = published_gain(in.q_a_norm);
    in.q_b = fold_latent(in.q_b, in.q_a_norm.data, K.Rq, gp);
    out.q_a = std::move(in.q_a);
    out.q_a_norm = Tensor({ql});
    out.q_a_norm.data = gp;
  }
  left_mul_rows(in.kv_a, 0, K.Rkv, true);
  for (int64_t p = 0; p < rope / 2; ++p) pair_rows(in.kv_a, kvl + 2 * p, K.angle[p], K.scale[p], /*key_side=*/true);
  const std::vector<float> gkv = published_gain(in.kv_a_norm);
  Tensor kv_b = fold_latent(in.kv_b, in.kv_a_norm.data, K.Rkv, gkv);
  out.kv_a = std::move(in.kv_a);
  out.kv_a_norm = Tensor({kvl});
  out.kv_a_norm.data = gkv;
  // Heads: maps, then the permutation.
  Tensor& q = ql > 0 ? in.q_b : in.q;
  for (int64_t h = 0; h < H; ++h) {
    left_mul_rows(q, h * dh, K.A[size_t(h)], true);                        // q_nope: A^T W
    for (int64_t p = 0; p < rope / 2; ++p) pair_rows(q, h * dh + nope + 2 * p, K.angle[p], K.scale[p], false);
    left_mul_rows(kv_b, h * kvb, K.Ainv[size_t(h)], false);                // k_nope: A^-1 W
    left_mul_rows(kv_b, h * kvb + nope, K.U[size_t(h)], true);             // v: U^T W
  }
  const int64_t qc = q.cols(), d = in.o.rows();
  Tensor qo({H * dh, qc}), kvo({H * kvb, kvl}), oo({d, H * dv});
  for (int64_t h = 0; h < H; ++h) {
    const int64_t s = K.head_slot[size_t(h)];
    std::copy_n(q.ptr() + h * dh * qc, dh * qc, qo.ptr() + s * dh * qc);
    std::copy_n(kv_b.ptr() + h * kvb * kvl, kvb * kvl, kvo.ptr() + s * kvb * kvl);
    const Mat& Ui = K.Uinv[size_t(h)];  // o columns of head h: W_o U^-T
    for (int64_t r = 0; r < d; ++r)
      for (int64_t i = 0; i < dv; ++i) {
        double acc = 0;
        for (int64_t k = 0; k < dv; ++k) acc += double(in.o.data[size_t(r * H * dv + h * dv + k)]) * Ui(i, k);
        oo.data[size_t(r * H * dv + s * dv + i)] = float(acc);
      }
  }
  (ql > 0 ? out.q_b : out.q) = std::move(qo);
  out.kv_b = std::move(kvo);
  out.o = std::move(oo);
  return out;
}

}  // namespace aloepri::obf
