// Stage 2 of every transform: the residual-stream key matrices. Readers W Diag(w_norm) Q^T,
// writers P^T W. HF layout (nn.Linear weight = out x in).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/core/tensor.h"

namespace aloepri::obf {

// Stage 2. Reader: W [out, d] -> W Diag(norm_w) Q^T  [out, d'] (norm_w empty = ones).
// W by value: the norm scaling is applied to it in place, so a caller that moves its last use
// in saves an out x d copy.
Tensor read_residual(Tensor w, const std::vector<float>& norm_w, const Tensor& Qf);
// Writer: W [d, in] -> P^T W  [d', in].
Tensor write_residual(const Tensor& w, const Tensor& Pf);
// Bias of a reader: unchanged by Q (it is added after the projection).

}  // namespace aloepri::obf
