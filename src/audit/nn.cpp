// NN, nearest-neighbour matching of obfuscated to plaintext embedding (and head) rows after the
// best linear alignment we could fit without the key.
//
// What the attacker knows: the plaintext model, the obfuscated model, the published alphas and
// noise rule. No anchors are needed (the published tau(bos)/tau(eos) are two rows, far too few
// to fit a d x d' map); instead the alignment comes from the FFN:
//  1. emb~ gate~^T = Pi (E + N) Diag(w) W_gate^T Zf, so the channel Gram matrix over the whole
//     vocabulary, G~ = Zf^T W (E+N)^T (E+N) W^T Zf / n, is predictable from the public model as
//     W (E^T E / n + alpha_e^2 sigma_e^2 I) W^T (the noise averages over n rows). Matching its
//     rows (sorted, then re-matched against the current assignment, Hungarian each round)
//     recovers the channel permutation Zf.
//  2. With Zf, gate~ = Zf^T W_gate Diag(w) Q^T is a least-squares problem for Q^T (d x d'),
//     trimmed of the worst-fitting channels; then emb~ Q = Pi (E + N): the key matrix is gone.
//  3. The up projection gives the channel scales Hf (one scalar fit per channel against the
//     recovered E + N), and head~ down~ = Pi (H + N_h) Diag(w_f) W_down Hf^-1 Zf then yields
//     Pi (H + N_h) by least squares: the head row with only the head noise (alpha_h).
//  4. Each obfuscated id is matched to the plaintext row minimizing the Gaussian negative
//     log-likelihood of both recovered rows (embedding distance / (alpha_e sigma_e)^2 + head
//     distance / (alpha_h sigma_h)^2).
// The layer whose least-squares fit has the smallest residual is used. This is the classic
// alignment (opt.nn_robust = false); nn_robust.cpp holds the drift-robust one, which adds a
// key-free reader x writer start and fits every FFN reader of every layer.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/obfuscate/math.h"
#include "weight_internal.h"

namespace aloepri::audit {

using namespace internal;
using obf::Mat;

namespace internal {

// Noise variance per entry the mechanism adds to a vocabulary matrix.
double noise_var(const Tensor& A, double alpha, bool per_row) {
  if (alpha == 0) return 0;
  if (!per_row) {
    const double s = global_std(A);
    return alpha * alpha * s * s;
  }
  const int64_t c = A.cols();
  double acc = 0;
  for (int64_t r = 0; r < A.rows(); ++r) {
    double s = 0, s2 = 0;
    for (int64_t j = 0; j < c; ++j) s += A.ptr()[r * c + j];
    const double mu = s / double(c);
    for (int64_t j = 0; j < c; ++j) s2 += (A.ptr()[r * c + j] - mu) * (A.ptr()[r * c + j] - mu);
    acc += s2 / double(c);
  }
  return alpha * alpha * acc / double(A.rows());
}

// Channel permutation from two ff x ff Gram matrices: obf channel i -> plain channel out[i].
std::vector<int32_t> match_channels(const Mat& Go, const Mat& Gp, int rounds) {
  const int64_t f = Gp.rows;
  // Round 0: sorted rows (invariant to the permutation of the other channels).
  auto sorted_rows = [f](const Mat& G) {
    Mat S = G;
    for (int64_t i = 0; i < f; ++i) std::sort(S.a.begin() + long(i * f), S.a.begin() + long((i + 1) * f));
    return S;
  };
  auto cost_of = [f](const Mat& A, const Mat& B) {  // squared distances of rows of A to rows of B
    Mat D = obf::matmul(A, B, false, true);
    std::vector<double> na(size_t(f), 0), nb(size_t(f), 0);
    for (int64_t i = 0; i < f; ++i)
      for (int64_t j = 0; j < A.cols; ++j) {
        na[size_t(i)] += A(i, j) * A(i, j);
        nb[size_t(i)] += B(i, j) * B(i, j);
      }
    std::vector<double> c(size_t(f * f));
    for (int64_t i = 0; i < f; ++i)
      for (int64_t j = 0; j < f; ++j) c[size_t(i * f + j)] = na[size_t(i)] + nb[size_t(j)] - 2 * D(i, j);
    return c;
  };
  std::vector<int32_t> pi = detail::min_cost_assignment(cost_of(sorted_rows(Go), sorted_rows(Gp)), f);
  for (int r = 0; r < rounds; ++r) {
    // Columns of the obfuscated Gram moved to the plaintext order of the current guess.
    Mat Gr(f, f);
    for (int64_t i = 0; i < f; ++i)
      for (int64_t a = 0; a < f; ++a) Gr(i, pi[size_t(a)]) = Go(i, a);
    auto next = detail::min_cost_assignment(cost_of(Gr, Gp), f);
    if (next == pi) break;
    pi = std::move(next);
  }
  return pi;
}

// Least squares X ~= Y B for B (Y: k x d, X: k x e), in double, on the rows in `use`.
Mat lstsq(const Mat& Y, const Mat& X, const std::vector<int64_t>& use) {
  Mat Ys(int64_t(use.size()), Y.cols), Xs(int64_t(use.size()), X.cols);
  for (size_t i = 0; i < use.size(); ++i) {
    std::copy(Y.a.begin() + long(use[i] * Y.cols), Y.a.begin() + long((use[i] + 1) * Y.cols),
              Ys.a.begin() + long(int64_t(i) * Y.cols));
    std::copy(X.a.begin() + long(use[i] * X.cols), X.a.begin() + long((use[i] + 1) * X.cols),
              Xs.a.begin() + long(int64_t(i) * X.cols));
  }
  Mat YtY = obf::matmul(Ys, Ys, true, false);
  double tr = 0;
  for (int64_t i = 0; i < YtY.rows; ++i) tr += YtY(i, i);
  for (int64_t i = 0; i < YtY.rows; ++i) YtY(i, i) += 1e-9 * tr / double(YtY.rows);  // tiny ridge
  return obf::matmul(obf::inverse(YtY), obf::matmul(Ys, Xs, true, false));
}

void match_vocab_rows(VocabAttack& out, const Tensor& Re, const Tensor& Rh, const ModelWeights& plain,
                      const Query& query, double var_e, double var_h, int topk) {
  // Whitened concatenation: Gaussian log-likelihood of both recovered rows.
  const double fe = 1.0 / std::sqrt(std::max(var_e, 1e-6 * global_std(plain.embed) * global_std(plain.embed)));
  const double fh = 1.0 / std::sqrt(std::max(var_h, 1e-6 * global_std(plain.head) * global_std(plain.head)));
  auto scaled = [](const Tensor& A, double f) {
    Tensor B = A;
    for (auto& x : B.data) x = float(x * f);
    return B;
  };
  const Tensor qe = scaled(Re, fe), qh = scaled(Rh, fh), pe = scaled(plain.embed, fe), ph = scaled(plain.head, fh);
  const int64_t n = plain.vocab();
  out.guesses = guesses_from(n, query.obf_ids, hcat({qe, qh}, {}), hcat({pe, ph}, {}), topk);
  // Each recovered row alone (cheap: always reported).
  out.parts.emplace_back("embedding", guesses_from(n, query.obf_ids, qe, pe, topk));
  out.parts.emplace_back("head", guesses_from(n, query.obf_ids, qh, ph, topk));
}

}  // namespace internal

namespace {

struct LayerFit {
  int64_t layer = -1;
  std::vector<int32_t> zf;  // obf channel -> plain channel
  Mat Qt;                   // d x d': emb~ Qt^T = Pi (E + N)
  double rel_residual = 1e300;
};

}  // namespace

VocabAttack internal::nn_attack_classic(const ModelWeights& plain, const ModelWeights& obf, const Query& query,
                                        const WeightAttackOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = plain.vocab(), d = plain.hidden();
  require(obf.vocab() == n && obf.layers.size() == plain.layers.size(), "NN", "models do not match");
  const double var_e = noise_var(plain.embed, opt.mech.alpha_e, opt.mech.per_row_noise);
  const double var_h = noise_var(plain.head, opt.mech.alpha_h, opt.mech.per_row_noise);

  // E^T E / n + var_e I: the predicted second moment of the noisy embedding.
  Mat Ep = to_mat(plain.embed);
  Mat M = obf::matmul(Ep, Ep, true, false);
  for (auto& x : M.a) x /= double(n);
  for (int64_t i = 0; i < d; ++i) M(i, i) += var_e;

  nlohmann::json layers_j = nlohmann::json::array();
  LayerFit best;
  for (size_t l = 0; l < plain.layers.size(); ++l) {
    if (opt.budget_seconds > 0 && seconds_since(t0) > opt.budget_seconds && best.layer >= 0) {
      layers_j.push_back({{"layer", l}, {"skipped", "time budget"}});
      continue;
    }
    const LayerWeights& P = plain.layers[l];
    const LayerWeights& O = obf.layers[l];
    const int64_t ff = P.w_gate.rows();
    // Plain: U = W_gate Diag(w) (ff x d); predicted Gram U M U^T.
    Mat U = to_mat(scale_cols(P.w_gate, P.ffn_norm));
    Mat Gp = obf::matmul(obf::matmul(U, M), U, false, true);
    Mat Ao = to_mat(linalg::matmul(obf.embed, O.w_gate, false, true));  // n x ff
    Mat Go = obf::matmul(Ao, Ao, true, false);
    for (auto& x : Go.a) x /= double(n);
    LayerFit fit;
    fit.layer = int64_t(l);
    fit.zf = match_channels(Go, Gp, 4);
    // Least squares gate~ rows (obf channel i) = U row zf[i] Q^T, trimmed twice.
    Mat Y(ff, d), X(ff, O.w_gate.cols());
    Mat Og = to_mat(O.w_gate);
    for (int64_t i = 0; i < ff; ++i) {
      std::copy(U.a.begin() + long(fit.zf[size_t(i)] * d), U.a.begin() + long((fit.zf[size_t(i)] + 1) * d),
                Y.a.begin() + long(i * d));
      std::copy(Og.a.begin() + long(i * X.cols), Og.a.begin() + long((i + 1) * X.cols), X.a.begin() + long(i * X.cols));
    }
    std::vector<int64_t> use(static_cast<size_t>(ff));
    std::iota(use.begin(), use.end(), 0);
    std::vector<double> res(static_cast<size_t>(ff));
    for (int round = 0; round < 3; ++round) {
      fit.Qt = lstsq(Y, X, use);
      Mat R = obf::matmul(Y, fit.Qt);
      double tot = 0;
      for (int64_t i = 0; i < ff; ++i) {
        double s = 0;
        for (int64_t j = 0; j < X.cols; ++j) s += (R(i, j) - X(i, j)) * (R(i, j) - X(i, j));
        res[size_t(i)] = s;
      }
      double xn = 0;
      for (int64_t i : use) {
        tot += res[size_t(i)];
        for (int64_t j = 0; j < X.cols; ++j) xn += X(i, j) * X(i, j);
      }
      fit.rel_residual = std::sqrt(tot / std::max(xn, 1e-300));
      if (round == 2) break;
      // Keep the best-fitting 80% of channels (those most likely matched right), needing >= d.
      std::vector<int64_t> order(static_cast<size_t>(ff));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return res[size_t(a)] < res[size_t(b)]; });
      const int64_t keep = std::max<int64_t>(std::min<int64_t>(ff, d + 8), int64_t(0.8 * double(use.size())));
      use.assign(order.begin(), order.begin() + std::min<int64_t>(keep, ff));
    }
    layers_j.push_back({{"layer", l}, {"relative_residual", fit.rel_residual}, {"channels_used", use.size()}});
    if (fit.rel_residual < best.rel_residual) best = std::move(fit);
  }
  const LayerWeights& P = plain.layers[size_t(best.layer)];
  const LayerWeights& O = obf.layers[size_t(best.layer)];
  const int64_t ff = P.w_gate.rows();
  const Tensor Qt = to_ten(best.Qt);  // d x d'

  // Recovered noisy embedding rows: all rows (needed for the channel scales), then the query.
  Tensor Rall = linalg::matmul(obf.embed, Qt, false, true);  // n x d, = Pi (E + N) up to fit error
  Tensor Re = gather_rows(Rall, query.obf_ids);

  // Channel scales from up: column i of emb~ up~^T ~= s_i * (E+N) Diag(w) W_up[zf[i]]^T.
  Tensor Au = linalg::matmul(obf.embed, O.w_up, false, true);                            // n x ff
  Tensor Bu = linalg::matmul(scale_cols(Rall, P.ffn_norm), P.w_up, false, true);       // n x ff, plain channel order
  std::vector<double> s(static_cast<size_t>(ff), 1.0);
  for (int64_t i = 0; i < ff; ++i) {
    const int64_t c = best.zf[size_t(i)];
    double num = 0, den = 0;
    for (int64_t r = 0; r < n; ++r) {
      num += double(Au.at(r, i)) * Bu.at(r, c);
      den += double(Bu.at(r, c)) * Bu.at(r, c);
    }
    s[size_t(i)] = den > 0 ? num / den : 1.0;
  }
  // head~ down~ for the query rows, columns back to plaintext order and scale: Pi (H+N) Diag(wf) W_down.
  Tensor Xh = linalg::matmul(gather_rows(obf.head, query.obf_ids), O.w_down);  // q x ff
  Tensor Xp({Xh.rows(), ff});
  for (int64_t r = 0; r < Xh.rows(); ++r)
    for (int64_t i = 0; i < ff; ++i) Xp.at(r, best.zf[size_t(i)]) = float(Xh.at(r, i) * s[size_t(i)]);
  // Solve Y W_down = Xp, W_down = P.w_down (d x ff): Y = Xp W^T (W W^T)^-1.
  Mat W = to_mat(P.w_down);
  Mat WWt = obf::matmul(W, W, false, true);
  Tensor Rh = linalg::matmul(Xp, to_ten(obf::matmul(obf::inverse(WWt), W)), false, true);  // q x d
  // Undo the final norm weight.
  for (int64_t r = 0; r < Rh.rows(); ++r)
    for (int64_t j = 0; j < d; ++j) {
      const float w = plain.final_norm.data[size_t(j)];
      Rh.at(r, j) = w != 0 ? Rh.at(r, j) / w : 0.0f;
    }

  VocabAttack out;
  out.attack = "NN";
  match_vocab_rows(out, Re, Rh, plain, query, var_e, var_h, opt.topk);
  out.details = {{"layers", layers_j},
                 {"layer_used", best.layer},
                 {"channel_match", best.zf},  // obfuscated FFN channel -> plaintext channel (layer_used)
                 {"noise_var_embedding", var_e},
                 {"noise_var_head", var_h},
                 {"alignment", "classic: one layer's FFN channel Gram matching + trimmed least squares (no anchors)"},
                 {"queried_ids", int64_t(query.obf_ids.size())}};
  out.seconds = seconds_since(t0);
  return out;
}

VocabAttack nn_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& query,
                      const WeightAttackOptions& opt) {
  return opt.nn_robust ? nn_attack_robust(plain, obf, query, opt) : nn_attack_classic(plain, obf, query, opt);
}

}  // namespace aloepri::audit
