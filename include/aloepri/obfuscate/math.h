// Random building blocks of the obfuscation (method.md sections 4-5), in double: Gaussian and
// Haar orthogonal matrices, conditioned value maps, BlockPerm, RoPE frequencies (the algebra they
// use is linalg.h). Key matrices are generated here in double and only cast to f32 when applied.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/formats/hf_config.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/core/rng.h"
#include "aloepri/core/tensor.h"

namespace aloepri::obf {

// The dense double matrix and its algebra live in linalg (the one module over BLAS/LAPACK);
// obf:: keeps their names so that the transforms read as method.md writes them.
using linalg::Mat;
using linalg::condition_number;
using linalg::from_tensor;
using linalg::inverse;
using linalg::left_null_space;
using linalg::matmul;
using linalg::matmul_acc;
using linalg::max_abs_diff;
using linalg::null_space;
using linalg::row_block;
using linalg::singular_values;
using linalg::to_f32;
using linalg::to_tensor;
using linalg::transpose;

Mat gaussian(int64_t rows, int64_t cols, double stddev, RngStream& rng);
// Haar-distributed orthogonal n x n: QR of a Gaussian matrix, columns sign-fixed by diag(R) so
// the distribution is exactly Haar (Mezzadri 2007).
Mat haar_orthogonal(int64_t n, RngStream& rng);
// A random n x n matrix with condition number exactly `cond` (>= 1): O1 Diag(s) O2^T with O1,
// O2 Haar orthogonal (drawn in that order) and s log-uniform in [1/sqrt(cond), sqrt(cond)], its
// first two entries pinned to the extremes (cond 1: a Haar orthogonal matrix). Its exact inverse
// O2 Diag(1/s) O1^T goes to *inv when given. Throws Error(kExitUsage) for cond < 1.
Mat conditioned_matrix(int64_t n, double cond, RngStream& rng, Mat* inv = nullptr);

// RoPE inverse frequencies f_p (p = 0 .. head_dim/2 - 1): hf_config.h's, the one implementation.
using aloepri::rope_inv_freq;

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
