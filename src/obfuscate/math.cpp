// Dense double linear algebra for key generation (OpenBLAS + LAPACKE) and the BlockPerm sampler.
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "aloepri/error.h"
#include "aloepri/obf_math.h"

namespace aloepri::obf {

Mat Mat::identity(int64_t n) {
  Mat m(n, n);
  for (int64_t i = 0; i < n; ++i) m(i, i) = 1.0;
  return m;
}

void matmul_acc(Mat& C, const Mat& A, const Mat& B, bool ta, bool tb) {
  const int64_t m = ta ? A.cols : A.rows, k = ta ? A.rows : A.cols;
  const int64_t kb = tb ? B.cols : B.rows, n = tb ? B.rows : B.cols;
  if (k != kb || C.rows != m || C.cols != n)
    throw Error("obfuscate/matmul", "shape mismatch", kExitError);
  if (m == 0 || n == 0) return;
  if (k == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              int(m), int(n), int(k), 1.0, A.ptr(), int(A.cols), B.ptr(), int(B.cols), 1.0, C.ptr(),
              int(C.cols));
}

Mat matmul(const Mat& A, const Mat& B, bool ta, bool tb) {
  Mat C(ta ? A.cols : A.rows, tb ? B.rows : B.cols);
  matmul_acc(C, A, B, ta, tb);
  return C;
}

Mat transpose(const Mat& A) {
  Mat T(A.cols, A.rows);
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = 0; j < A.cols; ++j) T(j, i) = A(i, j);
  return T;
}

Mat row_block(const Mat& A, int64_t r0, int64_t r1) {
  Mat B(r1 - r0, A.cols);
  std::copy(A.a.begin() + r0 * A.cols, A.a.begin() + r1 * A.cols, B.a.begin());
  return B;
}

Mat gaussian(int64_t rows, int64_t cols, double stddev, RngStream& rng) {
  Mat m(rows, cols);
  rng.normals(m.a.data(), m.a.size());
  for (double& x : m.a) x = stddev * x;
  return m;
}

Mat haar_orthogonal(int64_t n, RngStream& rng) {
  Mat A = gaussian(n, n, 1.0, rng);
  if (n == 0) return A;
  std::vector<double> tau(static_cast<size_t>(n));
  int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, int(n), int(n), A.ptr(), int(n), tau.data());
  if (info != 0) throw Error("obfuscate/haar", "dgeqrf failed: " + std::to_string(info), kExitError);
  std::vector<double> rdiag(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) rdiag[i] = A(i, i);
  info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, int(n), int(n), int(n), A.ptr(), int(n), tau.data());
  if (info != 0) throw Error("obfuscate/haar", "dorgqr failed: " + std::to_string(info), kExitError);
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

Mat inverse(const Mat& A) {
  if (A.rows != A.cols) throw Error("obfuscate/inverse", "matrix is not square", kExitError);
  const int64_t n = A.rows;
  Mat X = A;
  std::vector<lapack_int> ipiv(static_cast<size_t>(std::max<int64_t>(n, 1)));
  int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, int(n), int(n), X.ptr(), int(n), ipiv.data());
  if (info > 0) throw Error("obfuscate/inverse", "matrix is singular", kExitError);
  if (info < 0) throw Error("obfuscate/inverse", "dgetrf failed", kExitError);
  info = LAPACKE_dgetri(LAPACK_ROW_MAJOR, int(n), X.ptr(), int(n), ipiv.data());
  if (info != 0) throw Error("obfuscate/inverse", "dgetri failed", kExitError);
  return X;
}

// Full SVD; U (rows x rows) and/or VT (cols x cols) on request.
static std::vector<double> svd(const Mat& A, Mat* U, Mat* VT) {
  Mat X = A;
  const int64_t m = A.rows, n = A.cols;
  std::vector<double> s(static_cast<size_t>(std::min(m, n)));
  std::vector<double> superb(size_t(std::max<int64_t>(std::min(m, n), 2)));
  if (U) *U = Mat(m, m);
  if (VT) *VT = Mat(n, n);
  double dummy = 0;
  int info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, U ? 'A' : 'N', VT ? 'A' : 'N', int(m), int(n), X.ptr(),
                            int(n), s.data(), U ? U->ptr() : &dummy, U ? int(m) : 1,
                            VT ? VT->ptr() : &dummy, VT ? int(n) : 1, superb.data());
  if (info != 0) throw Error("obfuscate/svd", "dgesvd did not converge", kExitError);
  return s;
}

std::vector<double> singular_values(const Mat& A) { return svd(A, nullptr, nullptr); }

double condition_number(const Mat& A) {
  auto s = singular_values(A);
  if (s.empty() || s.back() <= 0) return INFINITY;
  return s.front() / s.back();
}

static void check_rank(const std::vector<double>& s, int64_t rank, const char* what) {
  // Singular values past the rank must be negligible and those before it must not be.
  const double smax = s.empty() ? 0 : s.front();
  const double tol = 1e-10 * std::max(smax, 1.0);
  for (size_t i = 0; i < s.size(); ++i) {
    bool in_rank = int64_t(i) < rank;
    if (in_rank && s[i] <= tol) throw Error(what, "matrix has lower rank than expected", kExitError);
    if (!in_rank && s[i] > tol) throw Error(what, "matrix has higher rank than expected", kExitError);
  }
}

Mat left_null_space(const Mat& A, int64_t k) {
  Mat U;
  auto s = svd(A, &U, nullptr);
  check_rank(s, A.rows - k, "obfuscate/left_null_space");
  Mat N(k, A.rows);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t r = 0; r < A.rows; ++r) N(i, r) = U(r, A.rows - k + i);
  return N;
}

Mat null_space(const Mat& A, int64_t k) {
  Mat VT;
  auto s = svd(A, nullptr, &VT);
  check_rank(s, A.cols - k, "obfuscate/null_space");
  Mat N(A.cols, k);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t c = 0; c < A.cols; ++c) N(c, i) = VT(A.cols - k + i, c);
  return N;
}

double max_abs_diff(const Mat& A, const Mat& B) {
  if (A.rows != B.rows || A.cols != B.cols) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < A.a.size(); ++i) m = std::max(m, std::abs(A.a[i] - B.a[i]));
  return m;
}

std::vector<float> to_f32(const Mat& A) { return std::vector<float>(A.a.begin(), A.a.end()); }

Tensor to_tensor(const Mat& A) {
  Tensor t({A.rows, A.cols});
  for (size_t i = 0; i < A.a.size(); ++i) t.data[i] = float(A.a[i]);
  return t;
}

Mat from_tensor(const Tensor& t) {
  Mat m(t.rows(), t.cols());
  for (size_t i = 0; i < t.data.size(); ++i) m.a[i] = t.data[i];
  return m;
}

std::vector<double> rope_inv_freq(double theta, int64_t dh) {
  std::vector<double> f(static_cast<size_t>(dh / 2));
  for (int64_t i = 0; i < dh / 2; ++i) f[i] = 1.0 / std::pow(theta, double(2 * i) / double(dh));
  return f;
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  std::vector<double> f = rope_inv_freq(c.rope_theta, c.head_dim);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type.empty() || rs.type == "default") return f;
  if (rs.type == "linear") {
    for (double& x : f) x /= rs.factor;
    return f;
  }
  if (rs.type == "llama3") {
    // As transformers' llama3 rope init: long wavelengths divided by factor, short kept, in
    // between interpolated in old_ctx / wavelength.
    const double old_ctx = double(rs.original_max_position_embeddings);
    const double low_wl = old_ctx / rs.low_freq_factor, high_wl = old_ctx / rs.high_freq_factor;
    for (double& x : f) {
      const double wl = 2.0 * M_PI / x;
      if (wl < high_wl) continue;
      if (wl > low_wl) {
        x /= rs.factor;
        continue;
      }
      const double smooth = (old_ctx / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      x = (1 - smooth) * x / rs.factor + smooth * x;
    }
    return f;
  }
  throw Error("config.json: rope_scaling", "unsupported type '" + rs.type + "'");
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
