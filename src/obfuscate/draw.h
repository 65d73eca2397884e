// Helpers shared by the key draws of the transforms (not part of the public interface).
#pragma once
#include <cmath>
#include <string>

#include "aloepri/core/rng.h"

namespace aloepri::obf::detail {

// The stream prefix of a layer's keys: "layer/<l>".
inline std::string layer_stream(int64_t layer) { return "layer/" + std::to_string(layer); }

// log-uniform in [1/range, range] (1 when range <= 1).
inline double log_uniform(RngStream& rng, double range) {
  if (range <= 1.0) return 1.0;
  const double lr = std::log(range);
  return std::exp((2 * rng.uniform() - 1) * lr);
}

}  // namespace aloepri::obf::detail
