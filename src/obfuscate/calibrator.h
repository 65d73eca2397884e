// The kappa calibrator of `--kappa calibrated` (not part of the public interface).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/formats/safetensors.h"
#include "aloepri/core/tensor.h"

namespace aloepri {

// The plaintext forward of the calibration ids, one layer at a time (the engine's LayerForward, the
// code the reference forward runs), alongside the obfuscated residual stream sum_k x_k P_k, so
// kappa = sqrt(d/d') mean_t ||x~_t|| / ||x_t|| is measured at every RMSNorm on real activations
// (method.md section 5 [choice]). Holds the two streams only; the layer is the caller's.
class Calibrator {
 public:
  Calibrator(const ModelConfig& c, const std::vector<int64_t>& ids, const TensorView& embed, const Tensor& Pemb)
      : fwd_(c), T_(int64_t(ids.size())), d_(c.hidden_size), dp_(Pemb.cols()) {
    const size_t es = dtype_size(embed.dtype);
    R_.assign(size_t(T_ * d_), 0.0);
    std::vector<float> row(static_cast<size_t>(d_));
    for (int64_t t = 0; t < T_; ++t) {
      require(ids[t] >= 0 && ids[t] < c.vocab_size, "--calib-ids",
              "token id " + std::to_string(ids[t]) + " is outside the vocabulary", kExitUsage);
      convert_to_f32(embed.dtype, embed.data + size_t(ids[t] * d_) * es, row.data(), size_t(d_));
      std::copy(row.begin(), row.end(), R_.begin() + t * d_);
    }
    Rt_.assign(size_t(T_ * dp_), 0.0);
    add_write(R_, Pemb);
  }

  double kappa() const {
    double acc = 0;
    for (int64_t t = 0; t < T_; ++t) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < d_; ++k) a += R_[t * d_ + k] * R_[t * d_ + k];
      for (int64_t k = 0; k < dp_; ++k) b += Rt_[t * dp_ + k] * Rt_[t * dp_ + k];
      acc += std::sqrt(b / a);
    }
    return std::sqrt(double(d_) / double(dp_)) * acc / double(T_);
  }

  // The layer's attention (ffn) sublayer adds x_k to the plaintext stream and x_k Po (Pd) to the
  // obfuscated one.
  void attention(int64_t l, const LayerWeights& L, const Tensor& Po) { add(fwd_.attention(l, L, R_), Po); }
  void ffn(int64_t l, const LayerWeights& L, const Tensor& Pd) { add(fwd_.ffn(l, L, R_), Pd); }

 private:
  void add(const std::vector<double>& a, const Tensor& P) {
    for (size_t i = 0; i < R_.size(); ++i) R_[i] += a[i];
    add_write(a, P);
  }
  void add_write(const std::vector<double>& a, const Tensor& P) {  // Rt += a P
    const std::vector<double> P64(P.data.begin(), P.data.end());
    linalg::gemm(false, false, T_, dp_, d_, 1.0, a.data(), d_, P64.data(), dp_, 1.0, Rt_.data(), dp_);
  }

  LayerForward fwd_;
  int64_t T_, d_, dp_;
  std::vector<double> R_, Rt_;  // [T, d], [T, d']
};

}  // namespace aloepri
