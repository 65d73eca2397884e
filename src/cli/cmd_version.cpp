// `aloepri env`: what this build links and which BLAS kernel runs (for benchmark records).
#include <cstdlib>
#include <iostream>

#include "aloepri/linalg/linalg.h"
#include "command.h"

namespace {
auto setup(CLI::App& sub) {
  return [] {
    const char* ct = std::getenv("OPENBLAS_CORETYPE");
    std::cout << "aloepri " << ALOEPRI_VERSION << "\n"
              << "openblas: " << aloepri::linalg::blas_config() << "\n"
              << "openblas kernel: " << aloepri::linalg::blas_kernel()
              << (ct ? std::string(" (OPENBLAS_CORETYPE=") + ct + ")" : std::string()) << "\n";
    return 0;
  };
}
}  // namespace
ALOEPRI_COMMAND(env, "env", 100, "Print version, linked libraries and the BLAS kernel in use", setup);
