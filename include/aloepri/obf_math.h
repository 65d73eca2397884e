// Linear-algebra building blocks of the obfuscation (method.md sections 4-5), in double:
// Haar orthogonal matrices, inverses, null spaces (LAPACKE), GEMMs (OpenBLAS), BlockPerm, RoPE
// frequencies. Key matrices are generated here in double and only cast to f32 when applied.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/hf_config.h"
#include "aloepri/rng.h"
#include "aloepri/tensor.h"

namespace aloepri::obf {

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
Mat gaussian(int64_t rows, int64_t cols, double stddev, RngStream& rng);
// Haar-distributed orthogonal n x n: QR of a Gaussian matrix, columns sign-fixed by diag(R) so
// the distribution is exactly Haar (Mezzadri 2007).
Mat haar_orthogonal(int64_t n, RngStream& rng);
// A random n x n matrix with condition number exactly `cond` (>= 1): O1 Diag(s) O2^T with O1,
// O2 Haar orthogonal (drawn in that order) and s log-uniform in [1/sqrt(cond), sqrt(cond)], its
// first two entries pinned to the extremes (cond 1: a Haar orthogonal matrix). Its exact inverse
// O2 Diag(1/s) O1^T goes to *inv when given. Throws Error(kExitUsage) for cond < 1.
Mat conditioned_matrix(int64_t n, double cond, RngStream& rng, Mat* inv = nullptr);
// Inverse by LU (dgetrf/dgetri); throws Error if singular.
Mat inverse(const Mat& A);
std::vector<double> singular_values(const Mat& A);
double condition_number(const Mat& A);  // sigma_max / sigma_min (2-norm)
// k orthonormal rows r (k x A.rows) with r A = 0: the left singular vectors of the k smallest
// singular values. A must have rank A.rows - k (checked).
Mat left_null_space(const Mat& A, int64_t k);
// k orthonormal columns n (A.cols x k) with A n = 0 (rank checked likewise).
Mat null_space(const Mat& A, int64_t k);
double max_abs_diff(const Mat& A, const Mat& B);
std::vector<float> to_f32(const Mat& A);
Tensor to_tensor(const Mat& A);
Mat from_tensor(const Tensor& t);

// RoPE inverse frequencies f_p (p = 0 .. head_dim/2 - 1) of the HF rotate_half layout, with the
// config's rope_scaling ("", "default", "linear", "llama3") applied.
std::vector<double> rope_inv_freq(const ModelConfig& c);
std::vector<double> rope_inv_freq(double theta, int64_t head_dim);

// BlockPerm(beta, gamma, f): a permutation of the M = f.size() RoPE pairs, returned as
// slot[p] = the slot pair p moves to. Windows: starting at t, c = min(beta, M - t); the window
// size w in 1..c is drawn with probability softmax_w(gamma (f[t+w-1] - f[t])), then the window
// is permuted uniformly (method.md section 5, corrected reading). beta = 1 gives the identity.
std::vector<int64_t> block_perm(int64_t beta, double gamma, const std::vector<double>& freqs,
                                RngStream& rng);
// Same, also reporting the window sizes drawn (for tests and statistics).
std::vector<int64_t> block_perm(int64_t beta, double gamma, const std::vector<double>& freqs,
                                RngStream& rng, std::vector<int64_t>* windows);

std::vector<int64_t> invert_perm(const std::vector<int64_t>& p);

}  // namespace aloepri::obf
