// Key matrices per Algorithm 1 (see obfuscate/keymat.h for the construction and why it is exact).
#include <cmath>

#include "aloepri/core/error.h"
#include "aloepri/obfuscate/keymat.h"

namespace aloepri::obf {

std::string keymat_name(KeymatVariant v) { return v == KeymatVariant::Paper ? "paper" : "exact-norm"; }

KeyMatrices::KeyMatrices(const Seed& seed, int64_t d, int64_t h, double lambda, KeymatVariant variant)
    : seed_(seed), d_(d), h_(h), lambda_(lambda), variant_(variant) {
  require(d > 0, "keymat", "hidden size must be positive", kExitUsage);
  require(h >= 0 && h % 2 == 0, "--expansion", "must be even and >= 0, got " + std::to_string(h), kExitUsage);
  require(lambda >= 0, "--lambda", "must be >= 0", kExitUsage);
  const int64_t dp = dprime();
  const double s = 1.0 / std::sqrt(double(d));
  RngStream rng(seed, "keymat/base");
  // Each intermediate is released as soon as it is used (same draws, same products): at 7B the
  // base matrices are d x d doubles of ~0.13 GB each, and this constructor is the peak of a
  // sharded part.
  Mat U = haar_orthogonal(d, rng);
  Mat Ztop;
  {
    const Mat Z = haar_orthogonal(dp, rng);
    Ztop = row_block(Z, 0, d);
    // Only the rows past d are needed after the base (instances add terms on them).
    Z_low_ = row_block(Z, d, dp);
  }

  if (variant == KeymatVariant::ExactNorm) {
    const double c = double(dp) / double(d);
    P_base_ = matmul(U, Ztop);
    for (double& x : P_base_.a) x *= std::sqrt(c);
    Q_base_ = matmul(Ztop, U, true, true);  // Z_top^T U^T
    for (double& x : Q_base_.a) x /= std::sqrt(c);
    return;
  }

  Mat B = U;
  {
    const Mat V = gaussian(d, d, s, rng);
    for (size_t i = 0; i < B.a.size(); ++i) B.a[i] += lambda * V.a[i];
  }
  Mat Binv = lambda == 0 ? transpose(U) : inverse(B);
  U = Mat();
  P_base_ = matmul(B, Ztop);
  B = Mat();
  Q_base_ = matmul(Ztop, Binv, true, false);
  Binv = Mat();
  Ztop = Mat();
  if (h == 0) return;
  Mat E = matmul(gaussian(d, h / 2, s, rng), gaussian(h / 2, h, s, rng));  // d x h, rank h/2
  Mat F = matmul(gaussian(h, h / 2, s, rng), gaussian(h / 2, d, s, rng));  // h x d, rank h/2
  Mat Zmid = row_block(Z_low_, 0, h), Zbot = row_block(Z_low_, h, 2 * h);
  matmul_acc(P_base_, E, Zbot);
  matmul_acc(Q_base_, Zmid, F, true, false);
  NF_ = left_null_space(F, h / 2);
  NE_ = null_space(E, h / 2);
}

Mat KeyMatrices::P(const std::string& role) const {
  Mat P = P_base_;
  if (variant_ == KeymatVariant::ExactNorm || h_ == 0) return P;
  RngStream rng(seed_, "keymat/P/" + role);
  Mat C = matmul(gaussian(d_, h_ / 2, 1.0 / std::sqrt(double(d_)), rng), NF_);  // d x h, C F = 0
  matmul_acc(P, C, row_block(Z_low_, 0, h_));
  return P;
}

Mat KeyMatrices::Q(const std::string& role) const {
  Mat Q = Q_base_;
  if (h_ == 0) return Q;
  RngStream rng(seed_, "keymat/Q/" + role);
  const double s = 1.0 / std::sqrt(double(d_));
  if (variant_ == KeymatVariant::ExactNorm) {
    Mat D = gaussian(2 * h_, d_, s, rng);  // anything: P is zero on these coordinates
    matmul_acc(Q, Z_low_, D, true, false);
    return Q;
  }
  Mat D = matmul(NE_, gaussian(h_ / 2, d_, s, rng));  // h x d, E D = 0
  matmul_acc(Q, row_block(Z_low_, h_, 2 * h_), D, true, false);
  return Q;
}

}  // namespace aloepri::obf
