// Key matrices per Algorithm 1 (see obf_keymat.h for the construction and why it is exact).
#include <cmath>

#include "aloepri/error.h"
#include "aloepri/obf_keymat.h"

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
  Mat U = haar_orthogonal(d, rng);
  Z_ = haar_orthogonal(dp, rng);
  Mat Ztop = row_block(Z_, 0, d);

  if (variant == KeymatVariant::ExactNorm) {
    const double c = double(dp) / double(d);
    P_base_ = matmul(U, Ztop);
    for (double& x : P_base_.a) x *= std::sqrt(c);
    Q_base_ = matmul(Ztop, U, true, true);  // Z_top^T U^T
    for (double& x : Q_base_.a) x /= std::sqrt(c);
    return;
  }

  Mat V = gaussian(d, d, s, rng);
  Mat B = U;
  for (size_t i = 0; i < B.a.size(); ++i) B.a[i] += lambda * V.a[i];
  Mat Binv = lambda == 0 ? transpose(U) : inverse(B);
  P_base_ = matmul(B, Ztop);
  Q_base_ = matmul(Ztop, Binv, true, false);
  if (h == 0) return;
  Mat E = matmul(gaussian(d, h / 2, s, rng), gaussian(h / 2, h, s, rng));  // d x h, rank h/2
  Mat F = matmul(gaussian(h, h / 2, s, rng), gaussian(h / 2, d, s, rng));  // h x d, rank h/2
  Mat Zmid = row_block(Z_, d, d + h), Zbot = row_block(Z_, d + h, dp);
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
  matmul_acc(P, C, row_block(Z_, d_, d_ + h_));
  return P;
}

Mat KeyMatrices::Q(const std::string& role) const {
  Mat Q = Q_base_;
  if (h_ == 0) return Q;
  RngStream rng(seed_, "keymat/Q/" + role);
  const double s = 1.0 / std::sqrt(double(d_));
  if (variant_ == KeymatVariant::ExactNorm) {
    Mat D = gaussian(2 * h_, d_, s, rng);  // anything: P is zero on these coordinates
    matmul_acc(Q, row_block(Z_, d_, dprime()), D, true, false);
    return Q;
  }
  Mat D = matmul(NE_, gaussian(h_ / 2, d_, s, rng));  // h x d, E D = 0
  matmul_acc(Q, row_block(Z_, d_ + h_, dprime()), D, true, false);
  return Q;
}

}  // namespace aloepri::obf
