// Dense linear algebra, the LAPACK half (see linalg.h): QR, LU inverse, SVD and null spaces,
// symmetric eigen-decomposition, through LAPACKE (row-major).
#include <lapacke.h>

#include <algorithm>
#include <cmath>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"

namespace aloepri::linalg {

void qr_in_place(Mat& A, std::vector<double>* rdiag) {
  if (A.rows != A.cols) throw Error("linalg/qr", "matrix is not square", kExitError);
  const int64_t n = A.rows;
  if (n == 0) return;
  std::vector<double> tau(static_cast<size_t>(n));
  int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, int(n), int(n), A.ptr(), int(n), tau.data());
  if (info != 0) throw Error("linalg/qr", "dgeqrf failed: " + std::to_string(info), kExitError);
  if (rdiag) {
    rdiag->resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) (*rdiag)[size_t(i)] = A(i, i);
  }
  info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, int(n), int(n), int(n), A.ptr(), int(n), tau.data());
  if (info != 0) throw Error("linalg/qr", "dorgqr failed: " + std::to_string(info), kExitError);
}

Mat inverse(const Mat& A) {
  if (A.rows != A.cols) throw Error("linalg/inverse", "matrix is not square", kExitError);
  const int64_t n = A.rows;
  Mat X = A;
  std::vector<lapack_int> ipiv(static_cast<size_t>(std::max<int64_t>(n, 1)));
  int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, int(n), int(n), X.ptr(), int(n), ipiv.data());
  if (info > 0) throw Error("linalg/inverse", "matrix is singular", kExitError);
  if (info < 0) throw Error("linalg/inverse", "dgetrf failed", kExitError);
  info = LAPACKE_dgetri(LAPACK_ROW_MAJOR, int(n), X.ptr(), int(n), ipiv.data());
  if (info != 0) throw Error("linalg/inverse", "dgetri failed", kExitError);
  return X;
}

std::vector<double> svd(const Mat& A, Mat* U, Mat* VT) {
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
  if (info != 0) throw Error("linalg/svd", "dgesvd did not converge", kExitError);
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
  check_rank(s, A.rows - k, "linalg/left_null_space");
  Mat N(k, A.rows);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t r = 0; r < A.rows; ++r) N(i, r) = U(r, A.rows - k + i);
  return N;
}

Mat null_space(const Mat& A, int64_t k) {
  Mat VT;
  auto s = svd(A, nullptr, &VT);
  check_rank(s, A.cols - k, "linalg/null_space");
  Mat N(A.cols, k);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t c = 0; c < A.cols; ++c) N(c, i) = VT(A.cols - k + i, c);
  return N;
}

int symmetric_eigen(Mat& A, std::vector<double>& w) {
  if (A.rows != A.cols) throw Error("linalg/symmetric_eigen", "matrix is not square", kExitError);
  w.assign(static_cast<size_t>(A.rows), 0.0);
  return LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', int(A.rows), A.ptr(), int(A.rows), w.data());
}

}  // namespace aloepri::linalg
