// Key matrices (Algorithm 1 and the exact-norm variant) and BlockPerm.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <set>

#include "aloepri/core/error.h"
#include "aloepri/obfuscate/keymat.h"
#include "aloepri/obfuscate/math.h"

using namespace aloepri;
using namespace aloepri::obf;

static Seed test_seed(uint8_t v) {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(v * 31 + i);
  return s;
}

static double orthogonality_error(const Mat& A) {  // max |A A^T - I|
  return max_abs_diff(matmul(A, A, false, true), Mat::identity(A.rows));
}

TEST(ObfMath, HaarIsOrthogonalAndSeedDependent) {
  RngStream r1(test_seed(1), "x"), r2(test_seed(1), "x"), r3(test_seed(2), "x");
  Mat A = haar_orthogonal(40, r1), B = haar_orthogonal(40, r2), C = haar_orthogonal(40, r3);
  EXPECT_LT(orthogonality_error(A), 1e-12);
  EXPECT_EQ(max_abs_diff(A, B), 0.0);  // same seed and domain: same matrix
  EXPECT_GT(max_abs_diff(A, C), 0.1);
  // The sign fix makes diag entries not systematically positive (plain QR would bias them).
  int pos = 0;
  RngStream r4(test_seed(3), "y");
  for (int t = 0; t < 200; ++t) pos += haar_orthogonal(3, r4)(0, 0) > 0;
  EXPECT_GT(pos, 60);
  EXPECT_LT(pos, 140);
}

TEST(ObfMath, InverseAndNullSpaces) {
  RngStream r(test_seed(4), "m");
  Mat A = gaussian(30, 30, 1.0, r);
  EXPECT_LT(max_abs_diff(matmul(A, inverse(A)), Mat::identity(30)), 1e-10);
  Mat F = matmul(gaussian(16, 8, 1.0, r), gaussian(8, 50, 1.0, r));  // 16 x 50, rank 8
  Mat NF = left_null_space(F, 8);                                       // 8 x 16
  EXPECT_LT(max_abs_diff(matmul(NF, F), Mat(8, 50)), 1e-10);
  EXPECT_LT(orthogonality_error(NF), 1e-12);
  Mat E = matmul(gaussian(50, 8, 1.0, r), gaussian(8, 16, 1.0, r));  // 50 x 16, rank 8
  Mat NE = null_space(E, 8);                                          // 16 x 8
  EXPECT_LT(max_abs_diff(matmul(E, NE), Mat(50, 8)), 1e-10);
  EXPECT_THROW(null_space(E, 9), Error);  // wrong rank is detected, not silently used
}

TEST(KeyMatrices, PaperVariantAnyInstancePairIsIdentity) {
  const int64_t d = 64, h = 16;
  KeyMatrices K(test_seed(5), d, h, 0.3, KeymatVariant::Paper);
  ASSERT_EQ(K.dprime(), d + 2 * h);
  std::vector<Mat> Ps = {K.P("emb"), K.P("layer/0/o"), K.P("layer/1/down")};
  std::vector<Mat> Qs = {K.Q("layer/0/q"), K.Q("layer/3/gate"), K.Q("head")};
  for (auto& P : Ps) {
    ASSERT_EQ(P.rows, d);
    ASSERT_EQ(P.cols, d + 2 * h);
    for (auto& Q : Qs) EXPECT_LT(max_abs_diff(matmul(P, Q), Mat::identity(d)), 1e-9);
  }
  // Instances really differ (fresh per role), and are not orthogonal (lambda > 0).
  EXPECT_GT(max_abs_diff(Ps[0], Ps[1]), 1e-3);
  EXPECT_GT(max_abs_diff(Qs[0], Qs[1]), 1e-3);
  EXPECT_GT(max_abs_diff(matmul(Ps[0], Ps[0], false, true), Mat::identity(d)), 1e-2);
  // Same seed + role: identical instance (determinism).
  KeyMatrices K2(test_seed(5), d, h, 0.3, KeymatVariant::Paper);
  EXPECT_EQ(max_abs_diff(K2.P("emb"), Ps[0]), 0.0);
  // A writer summing several instances is still read back exactly: (sum x_k P_k) Q = sum x_k.
  RngStream r(test_seed(6), "x");
  Mat X = gaussian(3, d, 1.0, r);
  Mat S = matmul(X, Ps[0]);
  matmul_acc(S, X, Ps[1]);
  Mat back = matmul(S, Qs[2]);
  for (int64_t i = 0; i < 3 * d; ++i) EXPECT_NEAR(back.a[i], 2 * X.a[i], 1e-9);
}

TEST(KeyMatrices, ExactSettingGivesOrthogonalP) {
  KeyMatrices K(test_seed(7), 48, 0, 0.0, KeymatVariant::Paper);
  Mat P = K.P("emb");
  EXPECT_EQ(P.cols, 48);
  EXPECT_LT(orthogonality_error(P), 1e-12);
  EXPECT_LT(max_abs_diff(K.Q("x"), transpose(P)), 1e-12);
}

TEST(KeyMatrices, ExactNormVariantPreservesNormsUpToConstant) {
  const int64_t d = 64, h = 16;
  KeyMatrices K(test_seed(8), d, h, 0.3 /* ignored */, KeymatVariant::ExactNorm);
  Mat P = K.P("emb");
  const double c = double(d + 2 * h) / double(d);
  Mat PPt = matmul(P, P, false, true);
  Mat cI = Mat::identity(d);
  for (double& x : cI.a) x *= c;
  EXPECT_LT(max_abs_diff(PPt, cI), 1e-12);
  for (auto role : {"a", "b", "c"}) EXPECT_LT(max_abs_diff(matmul(P, K.Q(role)), Mat::identity(d)), 1e-12);
  EXPECT_GT(max_abs_diff(K.Q("a"), K.Q("b")), 1e-3);  // readers are fresh instances
}

TEST(KeyMatrices, PaperNormRatioSpreadIsSmall) {
  // ||xP|| / ||x|| over random x: the RMSNorm approximation error of the paper variant.
  const int64_t d = 256, h = 128;
  KeyMatrices K(test_seed(9), d, h, 0.3, KeymatVariant::Paper);
  Mat P = K.P("w");
  RngStream r(test_seed(10), "x");
  Mat X = gaussian(200, d, 1.0, r);
  Mat XP = matmul(X, P);
  std::vector<double> ratio;
  for (int64_t i = 0; i < X.rows; ++i) {
    double a = 0, b = 0;
    for (int64_t k = 0; k < d; ++k) a += X(i, k) * X(i, k);
    for (int64_t k = 0; k < XP.cols; ++k) b += XP(i, k) * XP(i, k);
    ratio.push_back(std::sqrt(b / a));
  }
  double mean = std::accumulate(ratio.begin(), ratio.end(), 0.0) / double(ratio.size()), var = 0;
  for (double x : ratio) var += (x - mean) * (x - mean);
  const double rel_spread = std::sqrt(var / double(ratio.size())) / mean;
  std::printf("paper keymat d=%ld h=%ld lambda=0.3: ||xP||/||x|| mean %.4f, relative spread %.4f\n",
              long(d), long(h), mean, rel_spread);
  EXPECT_GT(rel_spread, 1e-4);  // not exact ...
  EXPECT_LT(rel_spread, 0.05);  // ... but close (method.md: 2-3% at d = 256)
}

// ---------------------------------------------------------------------------------------------
// BlockPerm

static std::vector<double> freqs(int64_t dh, double theta = 10000) { return rope_inv_freq(theta, dh); }

static bool is_perm(const std::vector<int64_t>& p) {
  std::vector<int64_t> s = p;
  std::sort(s.begin(), s.end());
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] != int64_t(i)) return false;
  return true;
}

TEST(BlockPerm, BetaOneIsIdentity) {
  RngStream r(test_seed(11), "bp");
  for (int t = 0; t < 20; ++t) {
    auto p = block_perm(1, 1000, freqs(64), r);
    for (size_t i = 0; i < p.size(); ++i) ASSERT_EQ(p[i], int64_t(i));
  }
}

TEST(BlockPerm, WindowsRespectBetaAndPartitionThePairs) {
  RngStream r(test_seed(12), "bp");
  for (int64_t beta : {2, 4, 8, 16}) {
    for (int t = 0; t < 50; ++t) {
      std::vector<int64_t> win;
      auto p = block_perm(beta, 1000, freqs(128), r, &win);
      ASSERT_TRUE(is_perm(p));
      ASSERT_EQ(std::accumulate(win.begin(), win.end(), int64_t(0)), 64);
      int64_t start = 0;
      for (int64_t w : win) {
        ASSERT_GE(w, 1);
        ASSERT_LE(w, beta);
        for (int64_t i = start; i < start + w; ++i) {  // a pair stays inside its window
          ASSERT_GE(p[i], start);
          ASSERT_LT(p[i], start + w);
        }
        start += w;
      }
    }
  }
}

TEST(BlockPerm, HighFrequencyPairsStayPutLowFrequencyPairsShuffle) {
  RngStream r(test_seed(13), "bp");
  const int64_t M = 64;
  std::vector<int> moved(M, 0);
  const int trials = 400;
  for (int t = 0; t < trials; ++t) {
    auto p = block_perm(8, 1000, freqs(2 * M), r);
    for (int64_t i = 0; i < M; ++i) moved[i] += p[i] != i;
  }
  // Pair 0 (frequency 1) is a singleton window with probability ~1 at gamma = 1000.
  EXPECT_EQ(moved[0], 0);
  EXPECT_LT(moved[1], trials / 50);
  // The lowest-frequency pairs move most of the time.
  int low = 0;
  for (int64_t i = M - 16; i < M; ++i) low += moved[i];
  EXPECT_GT(low, 16 * trials / 2);
  // gamma = 0: windows are uniform in size everywhere, so pair 0 moves often too.
  int moved0 = 0;
  for (int t = 0; t < trials; ++t) moved0 += block_perm(8, 0.0, freqs(2 * M), r)[0] != 0;
  EXPECT_GT(moved0, trials / 3);
}

// Attention-score error of BlockPerm as a function of relative position and beta. RoPE scores
// depend only on the offset D = m - n: s = Re sum_p q_p conj(k_p) e^{i D f_p}; after BlockPerm
// pair p is rotated by the frequency of its slot, f_{slot(p)}. Reported: mean |s~ - s| /
// sum_p |q_p||k_p| over random q, k and permutation draws.
static double blockperm_error(int64_t beta, int64_t D, int64_t dh, double theta, RngStream& r, int draws) {
  auto f = freqs(dh, theta);
  const int64_t M = dh / 2;
  double tot = 0;
  for (int t = 0; t < draws; ++t) {
    auto slot = block_perm(beta, 1000, f, r);
    double s = 0, so = 0, scale = 0;
    for (int64_t p = 0; p < M; ++p) {
      double qr = r.normal(), qi = r.normal(), kr = r.normal(), ki = r.normal();
      double re = qr * kr + qi * ki, im = qi * kr - qr * ki;  // q conj(k)
      double a = double(D) * f[p], b = double(D) * f[slot[p]];
      s += re * std::cos(a) - im * std::sin(a);
      so += re * std::cos(b) - im * std::sin(b);
      scale += std::hypot(qr, qi) * std::hypot(kr, ki);
    }
    tot += std::abs(so - s) / scale;
  }
  return tot / draws;
}

TEST(BlockPerm, ScoreErrorGrowsWithPositionAndBeta) {
  RngStream r(test_seed(14), "bperr");
  const std::vector<int64_t> betas = {1, 2, 4, 8, 16};
  const std::vector<int64_t> offsets = {0, 1, 16, 256, 4096, 32768};
  for (auto [dh, theta] : std::vector<std::pair<int64_t, double>>{{64, 1e4}, {128, 5e5}}) {
    std::printf("BlockPerm score error, head_dim %ld, theta %.0f, gamma 1000 (mean |ds| / sum|q||k|)\n",
                long(dh), theta);
    std::printf("%8s", "beta\\D");
    for (auto D : offsets) std::printf(" %9ld", long(D));
    std::printf("\n");
    std::map<std::pair<int64_t, int64_t>, double> err;
    for (auto beta : betas) {
      std::printf("%8ld", long(beta));
      for (auto D : offsets) {
        err[{beta, D}] = blockperm_error(beta, D, dh, theta, r, 200);
        std::printf(" %9.5f", err[{beta, D}]);
      }
      std::printf("\n");
    }
    for (auto D : offsets) EXPECT_EQ((err[{1, D}]), 0.0);       // beta = 1 is exact
    for (auto beta : betas) EXPECT_EQ((err[{beta, 0}]), 0.0);   // no offset, no rotation
    // More freedom, more error (monotone up to sampling noise) at every nonzero offset.
    for (auto D : offsets) {
      if (D == 0) continue;
      for (size_t i = 1; i + 1 < betas.size(); ++i)
        EXPECT_LE((err[{betas[i], D}]), (1.2 * err[{betas[i + 1], D}] + 1e-12)) << "D " << D;
    }
    // Error grows with the offset between neighbours (1 vs 256 vs 32768).
    EXPECT_LT((err[{8, 1}]), (err[{8, 256}]));
    EXPECT_LT((err[{8, 16}]), (err[{8, 32768}]));
    EXPECT_GT((err[{8, 4096}]), 0.0);
  }
}
