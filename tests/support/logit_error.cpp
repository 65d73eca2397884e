#include "support/logit_error.h"

#include <algorithm>
#include <cmath>

namespace aloepri::test {

double logit_error(ReferenceModel& plain, ReferenceModel& obf, const std::vector<int64_t>& ids,
                   const std::vector<int64_t>& tau) {
  const int64_t n = plain.vocab_size();
  std::vector<int64_t> oids;
  for (auto t : ids) oids.push_back(tau[size_t(t)]);
  plain.reset();
  obf.reset();
  const auto lp = plain.forward(ids), lo = obf.forward(oids);
  double worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    double mx = 0, diff = 0;
    for (int64_t y = 0; y < n; ++y) {
      mx = std::max(mx, std::abs(lp[t * n + y]));
      diff = std::max(diff, std::abs(lo[t * n + tau[size_t(y)]] - lp[t * n + y]));
    }
    worst = std::max(worst, diff / mx);
  }
  return worst;
}

}  // namespace aloepri::test
