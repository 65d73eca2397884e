// Internal helpers shared by the weight attacks (vma.cpp, ia.cpp, nn.cpp).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/audit_weights.h"
#include "aloepri/rng.h"
#include "aloepri/tensor.h"

namespace aloepri::audit::internal {

Tensor matmul_nt(const Tensor& A, const Tensor& B);  // A [r, k], B [c, k] -> A B^T [r, c]
Tensor matmul_nn(const Tensor& A, const Tensor& B);  // A [r, k], B [k, c] -> A B [r, c]
Tensor scale_cols(const Tensor& A, const std::vector<float>& w);  // A Diag(w)
Tensor gather_rows(const Tensor& A, const std::vector<int32_t>& rows);
Tensor hcat(const std::vector<Tensor>& parts, const std::vector<double>& weights);  // sqrt(w_i) * part_i
double global_std(const Tensor& A);
// A + alpha * sigma * N, sigma the global std of A (or each row's std), from the attacker's rng.
Tensor add_noise(const Tensor& A, double alpha, bool per_row, RngStream& rng);
// Standardize columns with the given statistics (plaintext ones applied to both sides).
void column_stats(const Tensor& A, std::vector<double>& mean, std::vector<double>& sd);
void standardize(Tensor& A, const std::vector<double>& mean, const std::vector<double>& sd);
// Nearest plaintext rows for each query row, spread into Guesses indexed by obfuscated id.
Guesses guesses_from(int64_t n, const std::vector<int32_t>& obf_ids, const Tensor& query_feats,
                     const Tensor& plain_feats, int k);
double seconds_since(std::chrono::steady_clock::time_point t0);

}  // namespace aloepri::audit::internal
