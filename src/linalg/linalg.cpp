// Dense linear algebra, the BLAS half (see linalg.h): GEMM and the double matrix. With lapack.cpp
// the only place of the project that includes <cblas.h> (apart from the libtorch tools). Needs
// only a CBLAS, so the CUDA trainer build (tools/train/cuda_build.sh) can link netlib's.
#include "aloepri/linalg/linalg.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "aloepri/core/error.h"

// Weak: OpenBLAS's own queries, absent from other CBLAS builds (netlib in cuda_build.sh).
extern "C" char* openblas_get_corename(void) __attribute__((weak));
extern "C" char* openblas_get_config(void) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

namespace aloepri::linalg {

static CBLAS_TRANSPOSE op(bool t) { return t ? CblasTrans : CblasNoTrans; }

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, op(ta), op(tb), int(m), int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C,
              int(ldc));
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, op(ta), op(tb), int(m), int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C,
              int(ldc));
}

Tensor matmul(const Tensor& A, const Tensor& B, bool ta, bool tb, const std::string& what) {
  const int64_t m = ta ? A.cols() : A.rows(), k = ta ? A.rows() : A.cols();
  const int64_t kb = tb ? B.cols() : B.rows(), n = tb ? B.rows() : B.cols();
  require(k == kb, what,
          "inner dimensions differ: " + A.shape_str() + (ta ? "^T" : "") + " x " + B.shape_str() + (tb ? "^T" : ""));
  Tensor C({m, n});
  gemm(ta, tb, m, n, k, 1.0f, A.ptr(), A.cols(), B.ptr(), B.cols(), 0.0f, C.ptr(), n);
  return C;
}

Mat Mat::identity(int64_t n) {
  Mat m(n, n);
  for (int64_t i = 0; i < n; ++i) m(i, i) = 1.0;
  return m;
}

void matmul_acc(Mat& C, const Mat& A, const Mat& B, bool ta, bool tb) {
  const int64_t m = ta ? A.cols : A.rows, k = ta ? A.rows : A.cols;
  const int64_t kb = tb ? B.cols : B.rows, n = tb ? B.rows : B.cols;
  if (k != kb || C.rows != m || C.cols != n) throw Error("linalg/matmul", "shape mismatch", kExitError);
  if (m == 0 || n == 0) return;
  if (k == 0) return;
  gemm(ta, tb, m, n, k, 1.0, A.ptr(), A.cols, B.ptr(), B.cols, 1.0, C.ptr(), C.cols);
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

std::string blas_config() { return openblas_get_config ? openblas_get_config() : "not OpenBLAS"; }
std::string blas_kernel() { return openblas_get_corename ? openblas_get_corename() : "unknown"; }
int blas_threads() { return openblas_get_num_threads ? openblas_get_num_threads() : 1; }

}  // namespace aloepri::linalg
