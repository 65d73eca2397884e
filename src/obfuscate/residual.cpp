// Stage 2: the residual-stream key matrices applied to readers and writers; see obfuscate/residual.h.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/obfuscate/residual.h"

namespace aloepri::obf {

Tensor read_residual(Tensor w, const std::vector<float>& norm_w, const Tensor& Qf) {
  const int64_t out = w.rows(), d = w.cols(), dp = Qf.rows();
  require(Qf.cols() == d, "read_residual", "Q has " + std::to_string(Qf.cols()) + " columns, weight has " +
                                               std::to_string(d), kExitError);
  if (!norm_w.empty()) {
    require(int64_t(norm_w.size()) == d, "read_residual", "norm weight size mismatch", kExitError);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t k = 0; k < d; ++k) w.ptr()[r * d + k] *= norm_w[k];
  }
  Tensor res({out, dp});
  linalg::gemm(false, true, int(out), int(dp), int(d), 1.0f, w.ptr(),
              int(d), Qf.ptr(), int(d), 0.0f, res.ptr(), int(dp));
  return res;
}

Tensor write_residual(const Tensor& w, const Tensor& Pf) {
  const int64_t d = w.rows(), in = w.cols(), dp = Pf.cols();
  require(Pf.rows() == d, "write_residual", "P has " + std::to_string(Pf.rows()) + " rows, weight has " +
                                                std::to_string(d), kExitError);
  Tensor res({dp, in});
  linalg::gemm(true, false, int(dp), int(in), int(d), 1.0f, Pf.ptr(), int(dp),
              w.ptr(), int(in), 0.0f, res.ptr(), int(in));
  return res;
}

}  // namespace aloepri::obf
