// Random key material (Gaussian, Haar, conditioned matrices) and the BlockPerm sampler; the
// algebra underneath is linalg.

#include <algorithm>
#include <cmath>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/obfuscate/math.h"

namespace aloepri::obf {

Mat gaussian(int64_t rows, int64_t cols, double stddev, RngStream& rng) {
  Mat m(rows, cols);
  rng.normals(m.a.data(), m.a.size());
  for (double& x : m.a) x = stddev * x;
  return m;
}

Mat haar_orthogonal(int64_t n, RngStream& rng) {
  Mat A = gaussian(n, n, 1.0, rng);
  if (n == 0) return A;
  std::vector<double> rdiag;
  linalg::qr_in_place(A, &rdiag);
  // Q diag(sign(R_ii)) is Haar; plain Householder QR alone is not.
  for (int64_t j = 0; j < n; ++j)
    if (rdiag[j] < 0)
      for (int64_t i = 0; i < n; ++i) A(i, j) = -A(i, j);
  return A;
}

Mat conditioned_matrix(int64_t n, double cond, RngStream& rng, Mat* inv) {
  if (!(cond >= 1.0) || !std::isfinite(cond))
    throw Error("--value-cond", "condition number must be >= 1, got " + std::to_string(cond), kExitUsage);
  Mat O1 = haar_orthogonal(n, rng), O2 = haar_orthogonal(n, rng);
  const double lr = 0.5 * std::log(cond);  // s in [exp(-lr), exp(lr)]
  std::vector<double> s(static_cast<size_t>(n), 1.0);
  for (int64_t i = 0; i < n; ++i) s[size_t(i)] = std::exp((2 * rng.uniform() - 1) * lr);
  if (n >= 2) {
    s[0] = std::exp(lr);
    s[1] = std::exp(-lr);
  } else if (n == 1) {
    s[0] = 1.0;
  }
  // O1 Diag(s) O2^T and O2 Diag(1/s) O1^T.
  Mat A = O1, B = O2;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c) {
      A(r, c) *= s[size_t(c)];
      B(r, c) /= s[size_t(c)];
    }
  if (inv) *inv = matmul(B, O1, false, true);
  return matmul(A, O2, false, true);
}

std::vector<int64_t> block_perm(int64_t beta, double gamma, const std::vector<double>& f,
                                RngStream& rng, std::vector<int64_t>* windows) {
  if (beta < 1) throw Error("--beta", "must be >= 1", kExitUsage);
  const int64_t M = int64_t(f.size());
  std::vector<int64_t> slot(static_cast<size_t>(M));
  std::iota(slot.begin(), slot.end(), 0);
  if (windows) windows->clear();
  int64_t t = 0;
  while (t < M) {
    const int64_t c = std::min(beta, M - t);
    // softmax over w = 1..c of gamma (f[t+w-1] - f[t]); logits <= 0 with the max (0) at w = 1
    // because frequencies decrease, so exp never overflows.
    std::vector<double> p(static_cast<size_t>(c));
    double sum = 0;
    for (int64_t w = 1; w <= c; ++w) sum += (p[w - 1] = std::exp(gamma * (f[t + w - 1] - f[t])));
    double u = rng.uniform() * sum;
    int64_t w = c;
    for (int64_t i = 0; i < c; ++i) {
      if (u < p[i]) {
        w = i + 1;
        break;
      }
      u -= p[i];
    }
    if (w > 1) {
      auto perm = rng.permutation(w);
      for (int64_t i = 0; i < w; ++i) slot[t + i] = t + perm[i];
    }
    if (windows) windows->push_back(w);
    t += w;
  }
  return slot;
}

std::vector<int64_t> block_perm(int64_t beta, double gamma, const std::vector<double>& f, RngStream& rng) {
  return block_perm(beta, gamma, f, rng, nullptr);
}

std::vector<int64_t> invert_perm(const std::vector<int64_t>& p) {
  std::vector<int64_t> inv(p.size());
  for (size_t i = 0; i < p.size(); ++i) inv[size_t(p[i])] = int64_t(i);
  return inv;
}

}  // namespace aloepri::obf
