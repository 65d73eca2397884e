// The latent attack on multi-head latent attention (see mla_latent.h).
#include "aloepri/audit/mla_latent.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "aloepri/core/error.h"

namespace aloepri::audit {

using linalg::Mat;

namespace {

// Rows [r0, r0 + rows) of W [*, n] times diag(g): a head's block of a latent's consumer.
Mat head_block(const Tensor& W, int64_t r0, int64_t rows, const Tensor& g) {
  const int64_t n = W.cols();
  Mat Y(rows, n);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < n; ++k) Y(i, k) = double(W.data[size_t((r0 + i) * n + k)]) * double(g.data[size_t(k)]);
  return Y;
}

// The projector onto the row space of Y [r, n] (r < n, full row rank): V_r V_r^T from the top r
// eigenvectors of Y^T Y.
Mat row_projector(const Mat& Y) {
  const int64_t r = Y.rows, n = Y.cols;
  Mat G = linalg::matmul(Y, Y, true, false);
  std::vector<double> w;
  require(linalg::symmetric_eigen(G, w) == 0, "mla-latent", "eigen-decomposition did not converge");
  Mat P(n, n);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) {
      double s = 0;
      for (int64_t k = n - r; k < n; ++k) s += G(a, k) * G(b, k);
      P(a, b) = s;
    }
  return P;
}

struct Eig {
  Mat V;  // eigenvectors, one per column, eigenvalues ascending
  std::vector<double> w;
};
Eig eig(Mat S) {
  Eig e;
  require(linalg::symmetric_eigen(S, e.w) == 0, "mla-latent", "eigen-decomposition did not converge");
  e.V = std::move(S);
  return e;
}

LatentRecovery recover(const std::string& latent, int64_t layer, const std::vector<Mat>& Yp,
                       const std::vector<Mat>& Yo) {
  LatentRecovery out;
  out.latent = latent;
  out.layer = layer;
  const int64_t H = int64_t(Yp.size()), r = Yp[0].rows, n = Yp[0].cols;
  out.identifiable = r < n;
  if (!out.identifiable) return out;
  std::vector<Mat> Pp, Po;
  Mat Sp(n, n), So(n, n);
  for (int64_t h = 0; h < H; ++h) {
    Pp.push_back(row_projector(Yp[size_t(h)]));
    Po.push_back(row_projector(Yo[size_t(h)]));
    for (size_t i = 0; i < Sp.a.size(); ++i) {
      Sp.a[i] += Pp.back().a[i];
      So.a[i] += Po.back().a[i];
    }
  }
  const Eig ep = eig(Sp), eo = eig(So);
  const double lmax = std::max(1e-300, ep.w.back());
  for (int64_t i = 0; i < n; ++i) out.eigen_mismatch = std::max(out.eigen_mismatch, std::fabs(ep.w[i] - eo.w[i]) / lmax);
  // Each head's projector in the eigenbasis; its diagonal is blind to the eigenvectors' signs.
  std::vector<Mat> Ap, Ao;
  for (int64_t h = 0; h < H; ++h) {
    Ap.push_back(linalg::matmul(linalg::matmul(ep.V, Pp[size_t(h)], true, false), ep.V));
    Ao.push_back(linalg::matmul(linalg::matmul(eo.V, Po[size_t(h)], true, false), eo.V));
  }
  std::vector<std::tuple<double, int64_t, int64_t>> cost;  // (distance, slot, head)
  for (int64_t s = 0; s < H; ++s)
    for (int64_t h = 0; h < H; ++h) {
      double dsum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double x = Ao[size_t(s)](i, i) - Ap[size_t(h)](i, i);
        dsum += x * x;
      }
      cost.emplace_back(dsum, s, h);
    }
  std::sort(cost.begin(), cost.end());
  out.head_of_slot.assign(size_t(H), -1);
  std::vector<bool> used(size_t(H), false);
  for (const auto& [c, s, h] : cost)
    if (out.head_of_slot[size_t(s)] < 0 && !used[size_t(h)]) {
      out.head_of_slot[size_t(s)] = h;
      used[size_t(h)] = true;
    }
  // Signs: A~_s = E A_h E with E = diag(eps); C_ij = sum_s A~_s(i,j) A_h(i,j) has the sign of
  // eps_i eps_j. Grow the determined set along the strongest links (largest eigenvalue first).
  Mat C(n, n);
  for (int64_t s = 0; s < H; ++s) {
    const Mat& a = Ao[size_t(s)];
    const Mat& b = Ap[size_t(out.head_of_slot[size_t(s)])];
    for (size_t i = 0; i < C.a.size(); ++i) C.a[i] += a.a[i] * b.a[i];
  }
  std::vector<double> eps(size_t(n), 0.0), best(size_t(n), -1.0);
  std::vector<int64_t> link(size_t(n), -1);
  auto add = [&](int64_t i) {
    for (int64_t j = 0; j < n; ++j)
      if (eps[size_t(j)] == 0 && std::fabs(C(i, j)) > best[size_t(j)]) {
        best[size_t(j)] = std::fabs(C(i, j));
        link[size_t(j)] = i;
      }
  };
  eps[size_t(n - 1)] = 1;
  add(n - 1);
  for (int64_t step = 1; step < n; ++step) {
    int64_t j = -1;
    for (int64_t k = 0; k < n; ++k)
      if (eps[size_t(k)] == 0 && (j < 0 || best[size_t(k)] > best[size_t(j)])) j = k;
    const int64_t i = link[size_t(j)];
    eps[size_t(j)] = i >= 0 && C(i, j) < 0 ? -eps[size_t(i)] : (i >= 0 ? eps[size_t(i)] : 1.0);
    add(j);
  }
  // R^ = V_p E V_o^T.
  Mat VE = ep.V;
  for (int64_t a = 0; a < n; ++a)
    for (int64_t k = 0; k < n; ++k) VE(a, k) *= eps[size_t(k)];
  out.R = linalg::matmul(VE, eo.V, false, true);
  // How much of the obfuscated blocks the recovered maps explain: L^ = Y~ R^T Y^+ per head.
  double num = 0, den = 0;
  for (int64_t s = 0; s < H; ++s) {
    const Mat& Y = Yp[size_t(out.head_of_slot[size_t(s)])];
    const Mat& Yt = Yo[size_t(s)];
    const Mat YR = linalg::matmul(Y, out.R);                                             // [r, n]
    const Mat L = linalg::matmul(linalg::matmul(Yt, YR, false, true),
                                 linalg::inverse(linalg::matmul(YR, YR, false, true)));  // [r, r]
    const Mat fit = linalg::matmul(L, YR);
    for (size_t i = 0; i < fit.a.size(); ++i) {
      num += (fit.a[i] - Yt.a[i]) * (fit.a[i] - Yt.a[i]);
      den += Yt.a[i] * Yt.a[i];
    }
  }
  out.residual = std::sqrt(num / std::max(den, 1e-300));
  return out;
}

}  // namespace

std::vector<LatentRecovery> mla_latent_attack(const ModelWeights& plain, const ModelWeights& obf) {
  const ModelConfig& c = plain.config;
  require(c.mla(), "mla-latent", "the model has no latent attention (only deepseek_v2 / deepseek_v3 do)");
  require(obf.layers.size() == plain.layers.size(), "mla-latent", "layer counts differ");
  const int64_t H = c.num_attention_heads, dh = c.head_dim, kvb = c.qk_nope_head_dim + c.v_head_dim;
  std::vector<LatentRecovery> out;
  for (size_t l = 0; l < plain.layers.size(); ++l) {
    const LayerWeights& P = plain.layers[l];
    const LayerWeights& O = obf.layers[l];
    auto blocks = [&](const Tensor& W, const Tensor& g, int64_t rows) {
      std::vector<Mat> v;
      for (int64_t h = 0; h < H; ++h) v.push_back(head_block(W, h * rows, rows, g));
      return v;
    };
    out.push_back(recover("kv", int64_t(l), blocks(P.wkv_b, P.kv_a_norm, kvb), blocks(O.wkv_b, O.kv_a_norm, kvb)));
    if (c.q_lora_rank > 0)
      out.push_back(recover("q", int64_t(l), blocks(P.wq_b, P.q_a_norm, dh), blocks(O.wq_b, O.q_a_norm, dh)));
  }
  return out;
}

nlohmann::json score_latent_recovery(const LatentRecovery& r, const Mat& R_true,
                                     const std::vector<int64_t>& head_slot_true) {
  nlohmann::json j = {{"latent", r.latent}, {"layer", r.layer}, {"identifiable", r.identifiable}};
  if (!r.identifiable) return j;
  int64_t right = 0;
  for (size_t h = 0; h < head_slot_true.size(); ++h)
    right += r.head_of_slot[size_t(head_slot_true[h])] == int64_t(h);
  double dm = 0, dp = 0, nr = 0;
  for (size_t i = 0; i < R_true.a.size(); ++i) {
    dm += (r.R.a[i] - R_true.a[i]) * (r.R.a[i] - R_true.a[i]);
    dp += (r.R.a[i] + R_true.a[i]) * (r.R.a[i] + R_true.a[i]);
    nr += R_true.a[i] * R_true.a[i];
  }
  j["heads_right"] = double(right) / double(head_slot_true.size());
  j["R_rel_error"] = std::sqrt(std::min(dm, dp) / nr);
  j["eigen_mismatch"] = r.eigen_mismatch;
  j["residual"] = r.residual;
  return j;
}

}  // namespace aloepri::audit
