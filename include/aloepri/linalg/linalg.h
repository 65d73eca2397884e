// Dense linear algebra: the one place that talks to BLAS (OpenBLAS's CBLAS) and LAPACK (LAPACKE).
// Everything that multiplies, factors or inverts matrices (the reference forward, the obfuscator's
// key matrices, the attacks, eval) goes through here, so that the client, which does none of it,
// links no heavy math (tests/client_link_test.cmake checks it).
//
// All matrices are row-major. Errors name the operation ("linalg/inverse", ...). Sources:
// src/linalg/linalg.cpp (BLAS: GEMM, the double matrix) and src/linalg/lapack.cpp (LAPACK: QR,
// inverse, SVD, null spaces, eigen-decomposition).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/core/tensor.h"

namespace aloepri::linalg {

// C = alpha op(A) op(B) + beta C with op(X) = X^T when the flag is set; C is m x n, the inner
// dimension k; lda/ldb/ldc are the row strides (row-major ?gemm).
void gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// op(A) op(B) of two f32 matrices (shapes checked; `what` names the caller in the error).
Tensor matmul(const Tensor& A, const Tensor& B, bool transA = false, bool transB = false,
              const std::string& what = "linalg/matmul");

// A dense row-major double matrix.
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<double> a;

  Mat() = default;
  Mat(int64_t r, int64_t c, double fill = 0.0) : rows(r), cols(c), a(size_t(r * c), fill) {}
  static Mat identity(int64_t n);
  double& operator()(int64_t r, int64_t c) { return a[size_t(r * cols + c)]; }
  double operator()(int64_t r, int64_t c) const { return a[size_t(r * cols + c)]; }
  double* ptr() { return a.data(); }
  const double* ptr() const { return a.data(); }
};

// C = op(A) op(B) (dgemm).
Mat matmul(const Mat& A, const Mat& B, bool transA = false, bool transB = false);
// C += op(A) op(B).
void matmul_acc(Mat& C, const Mat& A, const Mat& B, bool transA = false, bool transB = false);
Mat transpose(const Mat& A);
// Rows [r0, r1) of A.
Mat row_block(const Mat& A, int64_t r0, int64_t r1);
// --- lapack.cpp
// Householder QR of a square A in place: A becomes Q; diag(R) goes to *rdiag (dgeqrf + dorgqr).
void qr_in_place(Mat& A, std::vector<double>* rdiag);
// Inverse by LU (dgetrf/dgetri); throws Error if singular.
Mat inverse(const Mat& A);
// Full SVD (dgesvd): singular values descending; U (rows x rows) and/or VT (cols x cols) on request.
std::vector<double> svd(const Mat& A, Mat* U, Mat* VT);
std::vector<double> singular_values(const Mat& A);
double condition_number(const Mat& A);  // sigma_max / sigma_min (2-norm)
// k orthonormal rows r (k x A.rows) with r A = 0: the left singular vectors of the k smallest
// singular values. A must have rank A.rows - k (checked).
Mat left_null_space(const Mat& A, int64_t k);
// k orthonormal columns n (A.cols x k) with A n = 0 (rank checked likewise).
Mat null_space(const Mat& A, int64_t k);
// Eigen-decomposition of a symmetric A (upper triangle read; dsyevd): eigenvalues ascending; A
// becomes the eigenvectors, one per column. Returns LAPACK's info (0 = converged).
int symmetric_eigen(Mat& A, std::vector<double>& w);
// --- linalg.cpp
double max_abs_diff(const Mat& A, const Mat& B);
std::vector<float> to_f32(const Mat& A);
Tensor to_tensor(const Mat& A);
Mat from_tensor(const Tensor& t);

// The BLAS library and kernel in use, for `aloepri env` and the benchmarks.
std::string blas_config();
std::string blas_kernel();
int blas_threads();

}  // namespace aloepri::linalg
