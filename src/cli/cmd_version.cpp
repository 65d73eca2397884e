// `aloepri env`: what this build links and which BLAS kernel runs (for benchmark records).
#include <cstdlib>
#include <iostream>

#include "command.h"

extern "C" char* openblas_get_corename(void);
extern "C" char* openblas_get_config(void);

namespace {
auto setup(CLI::App& sub) {
  return [] {
    const char* ct = std::getenv("OPENBLAS_CORETYPE");
    std::cout << "aloepri " << ALOEPRI_VERSION << "\n"
              << "openblas: " << openblas_get_config() << "\n"
              << "openblas kernel: " << openblas_get_corename()
              << (ct ? std::string(" (OPENBLAS_CORETYPE=") + ct + ")" : std::string()) << "\n";
    return 0;
  };
}
}  // namespace
ALOEPRI_COMMAND(env, "env", 100, "Print version, linked libraries and the BLAS kernel in use", setup);
