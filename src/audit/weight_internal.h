// Internal helpers shared by the weight attacks (vma.cpp, ia.cpp, nn.cpp).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/audit/weights.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/obfuscate/math.h"
#include "aloepri/core/rng.h"
#include "aloepri/core/tensor.h"

namespace aloepri::audit::internal {

Tensor scale_cols(const Tensor& A, const Tensor& w);  // A Diag(w), w a norm gain [cols]
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
// Squared Euclidean distance of two f32 rows, accumulated in double.
double sq_dist(const float* a, const float* b, int64_t len);

// NN building blocks (nn.cpp), shared by the classic and the drift-robust alignment.
inline obf::Mat to_mat(const Tensor& t) { return linalg::from_tensor(t); }
inline Tensor to_ten(const obf::Mat& m) { return linalg::to_tensor(m); }
// Noise variance per entry the mechanism adds to a vocabulary matrix (alpha and the noise rule).
double noise_var(const Tensor& A, double alpha, bool per_row);
// Channel permutation from two ff x ff Gram matrices (sorted rows, then re-matching rounds):
// obfuscated channel i -> plaintext channel out[i].
std::vector<int32_t> match_channels(const obf::Mat& Go, const obf::Mat& Gp, int rounds);
// Least squares X ~= Y B for B (Y [k, d], X [k, e]) on the rows in `use`, tiny ridge.
obf::Mat lstsq(const obf::Mat& Y, const obf::Mat& X, const std::vector<int64_t>& use);
// Final NN step: each queried obfuscated id -> plaintext ids by the Gaussian likelihood of its
// recovered embedding row Re [q, d] (variance var_e per entry) and head row Rh [q, d] (var_h);
// fills out.guesses and the parts "embedding" and "head".
void match_vocab_rows(VocabAttack& out, const Tensor& Re, const Tensor& Rh, const ModelWeights& plain,
                      const Query& query, double var_e, double var_h, int topk);

// The two NN alignments (nn.cpp, nn_robust.cpp); nn_attack picks one by opt.nn_robust.
VocabAttack nn_attack_classic(const ModelWeights& plain, const ModelWeights& obf, const Query& query,
                              const WeightAttackOptions& opt);
VocabAttack nn_attack_robust(const ModelWeights& plain, const ModelWeights& obf, const Query& query,
                             const WeightAttackOptions& opt);

}  // namespace aloepri::audit::internal
