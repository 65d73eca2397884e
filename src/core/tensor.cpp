#include "aloepri/core/tensor.h"

namespace aloepri {

Tensor::Tensor(std::vector<int64_t> s, float fill) : shape(std::move(s)) {
  data.assign(size_t(numel()), fill);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string Tensor::shape_str() const { return shape_to_string(shape); }

}  // namespace aloepri
