// Exactness of an obfuscated model on the reference forward pass, shared by the obfuscation tests.
#pragma once
#include <cstdint>
#include <vector>

#include "aloepri/engine/forward.h"

namespace aloepri::test {

// Max over positions t and plaintext ids y of |obf(tau ids)[t, tau y] - plain(ids)[t, y]| / max_y |plain[t, y]|.
double logit_error(ReferenceModel& plain, ReferenceModel& obf, const std::vector<int64_t>& ids,
                   const std::vector<int64_t>& tau);

}  // namespace aloepri::test
