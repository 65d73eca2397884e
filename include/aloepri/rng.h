// Domain-separated CSPRNG streams derived from a 256-bit master seed.
// stream key = BLAKE2b-256(key = seed, message = "aloepri/v1/" + domain); bytes are the
// ChaCha20 (IETF) keystream under that key with a zero nonce. So every random object in an
// obfuscation is reproducible from (seed, domain) and independent across domains.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace aloepri {

using Seed = std::array<uint8_t, 32>;

Seed random_seed();  // from the OS CSPRNG (libsodium randombytes)

class RngStream {
 public:
  RngStream(const Seed& seed, const std::string& domain);
  uint64_t next_u64();
  double uniform();                   // [0, 1), 53 random bits
  double normal();                    // standard normal (Box-Muller, pairs cached)
  uint64_t below(uint64_t n);         // uniform in [0, n), unbiased
  std::vector<int64_t> permutation(int64_t n);  // uniform (Fisher-Yates)
  void fill_normal(float* out, size_t n, double stddev = 1.0);

 private:
  void refill();
  std::array<uint8_t, 32> key_{};
  uint64_t counter_ = 0;  // 64-byte block counter
  std::array<uint8_t, 4096> buf_{};
  size_t pos_ = sizeof(buf_);
  bool have_spare_ = false;
  double spare_ = 0;
};

}  // namespace aloepri
