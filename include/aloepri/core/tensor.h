// A dense, row-major, owning f32 tensor. Storage formats keep their own dtypes; all math
// in this project happens on Tensor (f32) or on double buffers where an oracle needs them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace aloepri {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s, float fill = 0.0f);
  static Tensor zeros(std::vector<int64_t> s) { return Tensor(std::move(s)); }

  int64_t numel() const;
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int64_t rows() const { return shape.at(0); }
  int64_t cols() const { return shape.size() == 1 ? 1 : shape.at(1); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  float& at(int64_t r, int64_t c) { return data[r * cols() + c]; }
  float at(int64_t r, int64_t c) const { return data[r * cols() + c]; }
  std::string shape_str() const;
};

std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace aloepri
