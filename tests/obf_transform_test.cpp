// Per-transform exactness on tiny random layers: each exact transform reproduces the plaintext
// output to f32 rounding (attention with RoPE at several positions, GQA/MHA, biases; SwiGLU FFN;
// RMSNorm folding with the exact-norm key matrices; embedding and head permutation).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "aloepri/core/error.h"
#include "aloepri/obfuscate/keymat.h"
#include "aloepri/obfuscate/math.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"

using namespace aloepri;
using namespace aloepri::obf;

namespace {

Seed seed_of(uint8_t v) {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(v + 7 * i);
  return s;
}

Tensor rand_tensor(std::vector<int64_t> shape, double std, RngStream& r) {
  Tensor t(std::move(shape));
  for (float& x : t.data) x = float(std * r.normal());
  return t;
}

// Rows of x (T x n) times a HF weight W (out x n) + bias: y = x W^T + b, in double.
std::vector<double> linear(const std::vector<double>& x, int64_t T, const Tensor& W, const Tensor& b) {
  const int64_t out = W.rows(), n = W.cols();
  std::vector<double> y(static_cast<size_t>(T * out));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b.data.empty() ? 0.0 : b.data[o];
      for (int64_t k = 0; k < n; ++k) acc += x[t * n + k] * W.data[o * n + k];
      y[t * out + o] = acc;
    }
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, int64_t T, int64_t n, const std::vector<float>& w,
                            double eps) {
  std::vector<double> y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t k = 0; k < n; ++k) ss += x[t * n + k] * x[t * n + k];
    const double inv = 1.0 / std::sqrt(ss / double(n) + eps);
    for (int64_t k = 0; k < n; ++k) y[t * n + k] = x[t * n + k] * inv * (w.empty() ? 1.0 : w[k]);
  }
  return y;
}

// HF rotate_half RoPE on every head of x (T x heads*dh) at positions pos[t].
void rope(std::vector<double>& x, int64_t T, int64_t heads, int64_t dh, const std::vector<int64_t>& pos,
          const std::vector<double>& f) {
  const int64_t M = dh / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      double* v = &x[(t * heads + h) * dh];
      for (int64_t p = 0; p < M; ++p) {
        const double a = double(pos[t]) * f[p], c = std::cos(a), s = std::sin(a);
        const double x0 = v[p], x1 = v[p + M];
        v[p] = x0 * c - x1 * s;
        v[p + M] = x1 * c + x0 * s;
      }
    }
}

struct AttnShape {
  int64_t d, m, mkv, dh;
};

// Causal GQA attention block on the normalized input xn (T x d) at positions pos,
// returns the o_proj output (T x d_out).
std::vector<double> attention(const std::vector<double>& xn, int64_t T, const AttnHF& W, const AttnShape& s,
                              const std::vector<int64_t>& pos, const std::vector<double>& f) {
  auto q = linear(xn, T, W.q, W.bq), k = linear(xn, T, W.k, W.bk), v = linear(xn, T, W.v, W.bv);
  rope(q, T, s.m, s.dh, pos, f);
  rope(k, T, s.mkv, s.dh, pos, f);
  const int64_t g = s.m / s.mkv;
  std::vector<double> ctx(size_t(T * s.m * s.dh), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < s.m; ++h) {
      const int64_t j = h / g;
      std::vector<double> sc(static_cast<size_t>(t + 1));
      double mx = -1e300;
      for (int64_t u = 0; u <= t; ++u) {
        double a = 0;
        for (int64_t e = 0; e < s.dh; ++e) a += q[(t * s.m + h) * s.dh + e] * k[(u * s.mkv + j) * s.dh + e];
        sc[u] = a / std::sqrt(double(s.dh));
        mx = std::max(mx, sc[u]);
      }
      double z = 0;
      for (auto& x : sc) z += (x = std::exp(x - mx));
      for (int64_t u = 0; u <= t; ++u)
        for (int64_t e = 0; e < s.dh; ++e)
          ctx[(t * s.m + h) * s.dh + e] += sc[u] / z * v[(u * s.mkv + j) * s.dh + e];
    }
  return linear(ctx, T, W.o, Tensor());
}

std::vector<double> times(const std::vector<double>& x, int64_t T, const Mat& P) {  // x (T x P.rows) P
  std::vector<double> y(size_t(T * P.cols), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < P.rows; ++i)
      for (int64_t j = 0; j < P.cols; ++j) y[t * P.cols + j] += x[t * P.rows + i] * P(i, j);
  return y;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::abs(x));
  return m;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::vector<float> ones(int64_t n, float v = 1.0f) { return std::vector<float>(size_t(n), v); }

// Obfuscates one attention block (stage 1 + stage 2) and compares the residual-stream output on
// x P_in against the plaintext output times P_o.
double attention_error(const AttnShape& s, bool bias, KeymatVariant kv, int64_t h, int64_t beta,
                       const std::vector<int64_t>& pos, uint8_t sd, double value_cond = 0) {
  RngStream r(seed_of(sd), "weights");
  AttnHF W;
  W.q = rand_tensor({s.m * s.dh, s.d}, 1.0 / std::sqrt(double(s.d)), r);
  W.k = rand_tensor({s.mkv * s.dh, s.d}, 1.0 / std::sqrt(double(s.d)), r);
  W.v = rand_tensor({s.mkv * s.dh, s.d}, 1.0 / std::sqrt(double(s.d)), r);
  W.o = rand_tensor({s.d, s.m * s.dh}, 1.0 / std::sqrt(double(s.m * s.dh)), r);
  if (bias) {
    W.bq = rand_tensor({s.m * s.dh}, 0.5, r);
    W.bk = rand_tensor({s.mkv * s.dh}, 0.5, r);
    W.bv = rand_tensor({s.mkv * s.dh}, 0.5, r);
  }
  std::vector<float> wn(static_cast<size_t>(s.d));
  for (auto& x : wn) x = float(1.0 + 0.2 * r.normal());
  const double eps = 1e-6;
  const auto f = rope_inv_freq(10000.0, s.dh);
  const int64_t T = int64_t(pos.size());
  std::vector<double> x(static_cast<size_t>(T * s.d));
  for (auto& v : x) v = 3.0 * r.normal();

  // Plaintext.
  auto plain = attention(rmsnorm(x, T, s.d, wn, eps), T, W, s, pos, f);

  // Obfuscated.
  const Seed key = seed_of(uint8_t(sd + 100));
  KeyMatrices K(key, s.d, h, 0.0, kv);
  AttnKeyOptions opt;
  opt.beta = beta;
  opt.value_cond = value_cond;
  AttnKeys AK = draw_attn_keys(key, 0, s.m, s.mkv, s.dh, f, opt);
  AttnHF st1 = transform_attention_heads(W, AK, s.dh);
  Mat Pin = K.P("in"), Po = K.P("o");
  AttnHF O;
  O.q = read_residual(st1.q, wn, to_tensor(K.Q("q")));
  O.k = read_residual(st1.k, wn, to_tensor(K.Q("k")));
  O.v = read_residual(st1.v, wn, to_tensor(K.Q("v")));
  O.o = write_residual(st1.o, to_tensor(Po));
  O.bq = st1.bq, O.bk = st1.bk, O.bv = st1.bv;
  const int64_t dp = K.dprime();
  // Exact-norm: ||xP|| = sqrt(d'/d) ||x||, so kappa = 1 and the plaintext eps are exact.
  auto xo = times(x, T, Pin);
  auto obf = attention(rmsnorm(xo, T, dp, ones(dp), eps), T, O, {dp, s.m, s.mkv, s.dh}, pos, f);
  auto expect = times(plain, T, Po);
  return max_diff(obf, expect) / max_abs(expect);
}

}  // namespace

TEST(ObfAttention, ExactTransformsReproducePlaintextAtSeveralPositions) {
  struct Case {
    AttnShape s;
    bool bias;
    const char* name;
  };
  std::vector<Case> cases = {{{32, 4, 2, 8}, false, "GQA"},
                             {{32, 4, 4, 8}, true, "MHA+bias"},
                             {{48, 6, 2, 16}, true, "GQA+bias"}};
  for (auto& c : cases)
    for (int64_t p0 : {0, 7, 1000, 100000}) {
      std::vector<int64_t> pos = {p0, p0 + 1, p0 + 2, p0 + 5, p0 + 40, p0 + 3000};
      // Exact setting: h = 0 (P orthogonal), beta = 1.
      double e0 = attention_error(c.s, c.bias, KeymatVariant::Paper, 0, 1, pos, 1);
      EXPECT_LT(e0, 2e-5) << c.name << " pos " << p0 << " exact setting";
      // Exact-norm key matrices with expansion: still exact.
      double e1 = attention_error(c.s, c.bias, KeymatVariant::ExactNorm, 8, 1, pos, 2);
      EXPECT_LT(e1, 2e-5) << c.name << " pos " << p0 << " exact-norm h=8";
    }
}

TEST(ObfAttention, ConditionedValueMapsAreExact) {
  // Issue 7: U_j with cond(U_j) = K (value_cond) is as exact as the report's Gaussian one.
  for (double K : {1.0, 4.0, 16.0}) {
    const std::vector<int64_t> pos = {0, 1, 2, 5, 40, 3000};
    double e0 = attention_error({32, 4, 2, 8}, false, KeymatVariant::Paper, 0, 1, pos, 1, K);
    EXPECT_LT(e0, 2e-5) << "GQA, value_cond " << K;
    double e1 = attention_error({48, 6, 2, 16}, true, KeymatVariant::ExactNorm, 8, 1, pos, 2, K);
    EXPECT_LT(e1, 2e-5) << "GQA+bias exact-norm h=8, value_cond " << K;
  }
}

TEST(ObfAttention, ValueCondDrawsValueMapsOfExactlyThatCondition) {
  const int64_t dh = 32;
  const auto f = rope_inv_freq(1e4, dh);
  AttnKeyOptions rep;  // value_cond 0: the report's draw
  const AttnKeys K0 = draw_attn_keys(seed_of(5), 2, 8, 4, dh, f, rep);
  for (double K : {1.0, 2.0, 4.0}) {
    AttnKeyOptions opt;
    opt.value_cond = K;
    const AttnKeys AK = draw_attn_keys(seed_of(5), 2, 8, 4, dh, f, opt);
    ASSERT_EQ(AK.kv.size(), 4u);
    for (size_t j = 0; j < AK.kv.size(); ++j) {
      const HeadKeys& hk = AK.kv[j];
      EXPECT_NEAR(condition_number(hk.U), K, 1e-9) << "K " << K << " head " << j;
      auto sv = singular_values(hk.U);
      EXPECT_NEAR(sv.front(), std::sqrt(K), 1e-9);
      EXPECT_NEAR(sv.back(), 1 / std::sqrt(K), 1e-9);
      EXPECT_LT(max_abs_diff(matmul(hk.U, hk.Uinv), Mat::identity(dh)), 1e-12);
      EXPECT_LT(max_abs_diff(matmul(hk.Uinv, hk.U), Mat::identity(dh)), 1e-12);
      if (K == 1.0) {
        EXPECT_LT(max_abs_diff(matmul(hk.U, hk.U, true, false), Mat::identity(dh)), 1e-12);
      }
      // A dense random matrix, not a permutation or diagonal: no entry carries a whole row.
      double mx = 0;
      for (double x : hk.U.a) mx = std::max(mx, std::abs(x));
      EXPECT_LT(mx, 0.9 * sv.front());
      // Only the value map changes: RoPE-pair secrets are the same draws as with the report's U_j.
      EXPECT_EQ(hk.angle, K0.kv[j].angle);
      EXPECT_EQ(hk.scale, K0.kv[j].scale);
      EXPECT_EQ(hk.pair_slot, K0.kv[j].pair_slot);
      EXPECT_GT(max_abs_diff(hk.U, K0.kv[j].U), 1e-3);
    }
    EXPECT_EQ(AK.kv_slot, K0.kv_slot);
    // Heads get different maps; the same key gives the same maps; another layer other ones.
    EXPECT_GT(max_abs_diff(AK.kv[0].U, AK.kv[1].U), 1e-3);
    const AttnKeys again = draw_attn_keys(seed_of(5), 2, 8, 4, dh, f, opt);
    for (size_t j = 0; j < AK.kv.size(); ++j) EXPECT_EQ(again.kv[j].U.a, AK.kv[j].U.a);
    const AttnKeys other = draw_attn_keys(seed_of(5), 3, 8, 4, dh, f, opt);
    EXPECT_GT(max_abs_diff(other.kv[0].U, AK.kv[0].U), 1e-3);
  }
  // value_cond 0 is still the report's draw from ".../vmap" (old keys reproduce their models).
  RngStream vm(seed_of(5), "layer/2/attn/kv0/vmap");
  const Mat g = gaussian(dh, dh, 1.0 / std::sqrt(double(dh)), vm);
  ASSERT_LE(condition_number(g), 10.0 * dh);  // this seed's first draw is accepted
  EXPECT_EQ(K0.kv[0].U.a, g.a);
  EXPECT_GT(condition_number(K0.kv[0].U), 4.0);  // Gaussian 32 x 32: cond ~ tens to hundreds

  // Anything but 0 or >= 1 is a usage error naming the option.
  for (double bad : {0.5, -1.0, std::nan("")}) {
    AttnKeyOptions opt;
    opt.value_cond = bad;
    try {
      draw_attn_keys(seed_of(5), 0, 8, 4, dh, f, opt);
      ADD_FAILURE() << "value_cond " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), kExitUsage);
      EXPECT_NE(std::string(e.what()).find("--value-cond"), std::string::npos) << e.what();
    }
  }
}

TEST(ObfAttention, BlockPermIsAnApproximationThatGrowsWithPosition) {
  AttnShape s{64, 4, 2, 32};
  // The error depends on the offsets between query and key positions only: small for a dense
  // window, larger when the same tokens sit far apart.
  double near = attention_error(s, false, KeymatVariant::Paper, 0, 8, {0, 1, 2, 3, 4, 5}, 3);
  double shifted = attention_error(s, false, KeymatVariant::Paper, 0, 8, {9000, 9001, 9002, 9003, 9004, 9005}, 3);
  double far = attention_error(s, false, KeymatVariant::Paper, 0, 8, {0, 500, 1000, 4000, 9000, 20000}, 3);
  std::printf("BlockPerm beta=8 attention output rel. error: offsets <= 5: %.2e, same at +9000: %.2e, "
              "offsets up to 20000: %.2e\n", near, shifted, far);
  EXPECT_NEAR(near, shifted, 1e-4 * near + 1e-6);  // relative positions only
  EXPECT_GT(far, 1e-5);  // really an approximation
  EXPECT_LT(far, 0.5);
  EXPECT_LT(near, far);
}

TEST(ObfAttention, HeadMapsCancelInScores) {
  RngStream r(seed_of(9), "hk");
  AttnKeyOptions opt;
  auto f = rope_inv_freq(1e4, 16);
  AttnKeys K = draw_attn_keys(seed_of(9), 3, 8, 2, 16, f, opt);
  for (auto& hk : K.kv) {
    Mat Tq = head_map(hk, 16, false), Tk = head_map(hk, 16, true);
    // Tq Tk^T = I: q Tq (k Tk)^T = q k^T.
    EXPECT_LT(max_abs_diff(matmul(Tq, Tk, false, true), Mat::identity(16)), 1e-12);
    EXPECT_LT(max_abs_diff(matmul(hk.U, hk.Uinv), Mat::identity(16)), 1e-10);
    EXPECT_LE(condition_number(hk.U), 10.0 * 16);
  }
  // Slots form permutations; kv heads and in-group heads are permuted.
  std::vector<int> seen(8, 0);
  for (int64_t i = 0; i < 8; ++i) seen[K.q_slot(i)]++;
  for (int s : seen) EXPECT_EQ(s, 1);
}

TEST(ObfFfn, ChannelPermutationAndScalingAreExact) {
  const int64_t d = 24, ff = 40, T = 5;
  RngStream r(seed_of(20), "ffn");
  FfnHF W{rand_tensor({ff, d}, 0.3, r), rand_tensor({ff, d}, 0.3, r), rand_tensor({d, ff}, 0.2, r)};
  std::vector<float> wn(static_cast<size_t>(d));
  for (auto& x : wn) x = float(1.0 + 0.2 * r.normal());
  std::vector<double> x(static_cast<size_t>(T * d));
  for (auto& v : x) v = r.normal();
  auto swiglu = [&](const std::vector<double>& xn, const FfnHF& w) {
    auto gt = linear(xn, T, w.gate, Tensor()), up = linear(xn, T, w.up, Tensor());
    for (size_t i = 0; i < gt.size(); ++i) gt[i] = gt[i] / (1 + std::exp(-gt[i])) * up[i];
    return linear(gt, T, w.down, Tensor());
  };
  auto plain = swiglu(rmsnorm(x, T, d, wn, 1e-5), W);
  for (auto variant : {KeymatVariant::Paper, KeymatVariant::ExactNorm}) {
    const int64_t h = variant == KeymatVariant::Paper ? 0 : 6;
    KeyMatrices K(seed_of(21), d, h, 0.0, variant);
    FfnKeys FK = draw_ffn_keys(seed_of(21), 0, ff, 2.0);
    FfnHF s1 = transform_ffn_channels(W, FK);
    Mat Pin = K.P("in"), Pd = K.P("down");
    FfnHF O{read_residual(s1.gate, wn, to_tensor(K.Q("g"))), read_residual(s1.up, wn, to_tensor(K.Q("u"))),
            write_residual(s1.down, to_tensor(Pd))};
    const int64_t dp = K.dprime();
    auto obf = swiglu(rmsnorm(times(x, T, Pin), T, dp, ones(dp), 1e-5), O);
    auto expect = times(plain, T, Pd);
    EXPECT_LT(max_diff(obf, expect) / max_abs(expect), 2e-5) << keymat_name(variant);
  }
  // The stage-1 transform really changes the weights.
  FfnHF s1 = transform_ffn_channels(W, draw_ffn_keys(seed_of(21), 0, ff, 2.0));
  EXPECT_NE(s1.up.data, W.up.data);
}

TEST(ObfFfn, InPlaceChannelTransformIsTheElementwiseDefinition) {
  // The in-place transform (rows moved cycle by cycle) gives, bit for bit, gate'[slot c] =
  // gate[c], up'[slot c] = up[c] * float(scale c), down'[:, slot c] = float(down[:, c] / scale c).
  const int64_t ff = 97, d = 13;  // odd sizes: cycles of many lengths
  RngStream r(seed_of(23), "w");
  auto rnd = [&](int64_t a, int64_t b) {
    Tensor t({a, b});
    for (auto& x : t.data) x = float(r.normal());
    return t;
  };
  const FfnHF W{rnd(ff, d), rnd(ff, d), rnd(d, ff)};
  const FfnKeys K = draw_ffn_keys(seed_of(23), 1, ff, 2.0);
  const FfnHF S = transform_ffn_channels(W, K);
  int moved = 0;
  for (int64_t c = 0; c < ff; ++c) {
    const int64_t s = K.slot[size_t(c)];
    moved += s != c;
    for (int64_t k = 0; k < d; ++k) {
      ASSERT_EQ(S.gate.at(s, k), W.gate.at(c, k));
      ASSERT_EQ(S.up.at(s, k), W.up.at(c, k) * float(K.scale[size_t(c)]));
    }
    for (int64_t k = 0; k < d; ++k) ASSERT_EQ(S.down.at(k, s), float(double(W.down.at(k, c)) / K.scale[size_t(c)]));
  }
  EXPECT_GT(moved, ff / 2);  // the permutation is not (nearly) the identity
  FfnKeys bad = K;
  bad.slot[1] = bad.slot[0];  // two channels to one slot
  EXPECT_THROW(transform_ffn_channels(W, bad), Error);
}

TEST(ObfNorm, ExactNormFoldingAndPaperApproximation) {
  // RMSNorm_obf(x P) with weight kappa and eps' = eps kappa^2, read by Q Diag(w), equals
  // RMSNorm(x) Diag(w) exactly for the exact-norm key matrices (kappa = 1), and approximately for
  // the paper ones (kappa from E||xP||^2 = ||P||_F^2 E x_i^2).
  const int64_t d = 64, h = 16, T = 20;
  RngStream r(seed_of(30), "norm");
  std::vector<float> wn(static_cast<size_t>(d));
  for (auto& x : wn) x = float(1.0 + 0.3 * r.normal());
  std::vector<double> x(static_cast<size_t>(T * d));
  for (auto& v : x) v = r.normal();
  x[3] = 40.0;  // a massive dimension, as in real LLM residual streams
  auto plain = rmsnorm(x, T, d, wn, 1e-6);
  for (auto variant : {KeymatVariant::ExactNorm, KeymatVariant::Paper}) {
    KeyMatrices K(seed_of(31), d, h, 0.3, variant);
    Mat P = K.P("w"), Q = K.Q("r");
    const int64_t dp = K.dprime();
    double fro = 0;
    for (double v : P.a) fro += v * v;
    const double kappa = std::sqrt(fro / double(dp));
    auto obf = rmsnorm(times(x, T, P), T, dp, ones(dp, float(kappa)), 1e-6 * kappa * kappa);
    // read by Q then Diag(w)
    auto back = times(obf, T, Q);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < d; ++k) back[t * d + k] *= wn[k];
    const double err = max_diff(back, plain) / max_abs(plain);
    std::printf("norm folding %s: kappa %.4f, max rel error %.2e\n", keymat_name(variant).c_str(), kappa, err);
    if (variant == KeymatVariant::ExactNorm) {
      EXPECT_NEAR(kappa, 1.0, 1e-12);
      EXPECT_LT(err, 1e-12);
    } else {
      EXPECT_GT(err, 1e-6);
      EXPECT_LT(err, 0.25);
    }
  }
}

TEST(ObfEmbedding, PermutationAndHeadRoundTrip) {
  const int64_t n = 50, d = 16, h = 4;
  RngStream r(seed_of(40), "emb");
  Tensor emb = rand_tensor({n, d}, 1.0, r), head = rand_tensor({n, d}, 1.0, r);
  RngStream tr(seed_of(41), "tau");
  auto tau = tr.permutation(n);
  KeyMatrices K(seed_of(42), d, h, 0.0, KeymatVariant::ExactNorm);
  Mat P = K.P("emb"), Q = K.Q("head");
  std::vector<float> wf(static_cast<size_t>(d));
  for (auto& x : wf) x = float(1.0 + 0.1 * r.normal());
  RngStream noise(seed_of(43), "noise");
  Tensor E = obfuscate_embedding(emb, tau, 0.0, NoiseScale::Global, noise, to_tensor(P));
  Tensor H = obfuscate_head(head, tau, 0.0, NoiseScale::Global, noise, wf, to_tensor(Q));
  ASSERT_EQ(E.cols(), K.dprime());
  ASSERT_EQ(H.cols(), K.dprime());
  // Token t enters as tau[t]; its obfuscated embedding read back by Q is the plaintext row, and
  // the obfuscated logit of tau[y] equals the plaintext logit of y.
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> e(E.ptr() + tau[t] * E.cols(), E.ptr() + (tau[t] + 1) * E.cols());
    auto back = times(e, 1, Q);
    for (int64_t k = 0; k < d; ++k) EXPECT_NEAR(back[k], emb.at(t, k), 1e-5);
    for (int64_t y = 0; y < n; y += 7) {
      double lp = 0, lo = 0;
      for (int64_t k = 0; k < d; ++k) lp += emb.at(t, k) * wf[k] * head.at(y, k);
      for (int64_t k = 0; k < E.cols(); ++k) lo += e[k] * H.at(tau[y], k);
      EXPECT_NEAR(lo, lp, 1e-4 * (1 + std::abs(lp)));
    }
  }
  // Noise: global std scaling gives the requested relative magnitude.
  RngStream noise2(seed_of(44), "noise");
  Tensor I = to_tensor(Mat::identity(d));
  Tensor En = obfuscate_embedding(emb, tau, 0.5, NoiseScale::Global, noise2, I);
  double ss = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < d; ++k) {
      double dlt = En.at(tau[t], k) - emb.at(t, k);
      ss += dlt * dlt;
    }
  EXPECT_NEAR(std::sqrt(ss / double(n * d)), 0.5, 0.08);  // emb std is ~1
  Tensor Er = obfuscate_embedding(emb, tau, 0.5, NoiseScale::PerRow, noise2, I);
  EXPECT_NE(Er.data, En.data);
}

// Q/K RMSNorm with one gain vector for every head (Qwen3, issue 16): the shared keys are a signed
// pair permutation (quarter turns) whose pair scale moves into the gains, and
// RMSNorm(q R Zb) * g~ = (RMSNorm(q) * g) R H Zb for every head, for q and (with H^-1) for k.
// Control: a general rotation angle (what llama's heads get) breaks the identity under unequal
// gains, which is why q/k-norm models get quarter turns only.
TEST(ObfAttention, QkNormGainsCommuteWithTheSharedHeadMap) {
  const int64_t dh = 16, M = dh / 2;
  auto f = rope_inv_freq(1e4, dh);
  AttnKeyOptions opt;
  opt.qk_norm = true;
  opt.beta = 8;  // BlockPerm moves pairs too: the gains must follow
  opt.gamma = 1;
  AttnKeys K = draw_attn_keys(seed_of(12), 2, 8, 2, dh, f, opt);
  for (const auto& hk : K.kv) {
    EXPECT_EQ(hk.quarter, K.kv[0].quarter);
    EXPECT_EQ(hk.scale, K.kv[0].scale);
    EXPECT_EQ(hk.pair_slot, K.kv[0].pair_slot);
  }
  const HeadKeys& hk = K.kv[0];
  int odd = 0, moved = 0;
  for (int64_t p = 0; p < M; ++p) odd += hk.quarter[p] & 1, moved += hk.pair_slot[p] != p;
  EXPECT_GT(odd, 0);    // some pairs have their gains swapped
  EXPECT_GT(moved, 0);  // and BlockPerm moved some
  RngStream r(seed_of(12), "qk");
  std::vector<float> gq(dh), gk(dh), gq2(dh), gk2(dh);
  for (int64_t e = 0; e < dh; ++e) gq[e] = float(1 + 0.3 * r.normal()), gk[e] = float(1 + 0.3 * r.normal());
  qk_norm_gains(gq.data(), gk.data(), hk, dh, gq2.data(), gk2.data());
  HeadKeys unit = hk;
  unit.scale.clear();
  auto check = [&](const HeadKeys& rows, const HeadKeys& full, const std::vector<float>& g,
                   const std::vector<float>& g2, bool k_side) {
    const Mat T0 = head_map(rows, dh, k_side), T = head_map(full, dh, k_side);
    double worst = 0;
    for (int t = 0; t < 8; ++t) {
      std::vector<double> x(dh);
      for (auto& v : x) v = r.normal();
      std::vector<double> xt(dh, 0.0), lhs, rhs(dh, 0.0);
      for (int64_t o = 0; o < dh; ++o)
        for (int64_t i = 0; i < dh; ++i) xt[o] += x[i] * T0(i, o);
      lhs = rmsnorm(xt, 1, dh, g2, 1e-6);
      const auto n = rmsnorm(x, 1, dh, g, 1e-6);
      for (int64_t o = 0; o < dh; ++o)
        for (int64_t i = 0; i < dh; ++i) rhs[o] += n[i] * T(i, o);
      for (int64_t o = 0; o < dh; ++o) worst = std::max(worst, std::abs(lhs[o] - rhs[o]) / (1e-12 + std::abs(rhs[o])));
    }
    return worst;
  };
  EXPECT_LT(check(unit, hk, gq, gq2, false), 1e-6);  // q: g~ = g H after the permutation
  EXPECT_LT(check(unit, hk, gk, gk2, true), 1e-6);   // k: g~ = g / H
  HeadKeys general = hk, general_unit = unit;
  general.quarter.clear();
  general_unit.quarter.clear();
  for (int64_t p = 0; p < M; ++p) general.angle[p] = general_unit.angle[p] = 0.3 + 0.1 * double(p);
  EXPECT_GT(check(general_unit, general, gq, gq2, false), 1e-2);
}
