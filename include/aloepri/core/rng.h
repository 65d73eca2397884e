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
// Uniform in [0, n), n <= 2^32, unbiased, from the OS CSPRNG (libsodium randombytes_uniform);
// thread-safe, never reproducible: for choices a server must not be able to predict (the
// client's homophone copy per token occurrence).
uint32_t random_below(uint32_t n);

class RngStream {
 public:
  RngStream(const Seed& seed, const std::string& domain);
  uint64_t next_u64();
  double uniform();                   // [0, 1), 53 random bits
  double normal();                    // standard normal (Box-Muller, pairs cached)
  uint64_t below(uint64_t n);         // uniform in [0, n), unbiased
  std::vector<int64_t> permutation(int64_t n);  // uniform (Fisher-Yates)
  void fill_normal(float* out, size_t n, double stddev = 1.0);
  // out[0..n) = n successive normal() draws, bit for bit, with the same stream state after:
  // the keystream is generated in large blocks and the Box-Muller pairs on several threads
  // (each pair reads 16 fixed keystream bytes, so the pairs are independent once the stream
  // offset of the first is known; a rejected u1 == 0, p = 2^-53, falls back to normal()).
  void normals(double* out, size_t n);

 private:
  void refill();
  uint64_t offset() const;     // keystream byte position of the next next_u64()
  void seek(uint64_t offset);  // continue the stream at that byte position
  size_t bulk_pairs(double* out, size_t pairs);  // see normals(); returns the pairs drawn
  std::array<uint8_t, 32> key_{};
  uint64_t counter_ = 0;  // 64-byte block counter
  std::array<uint8_t, 4096> buf_{};
  size_t pos_ = sizeof(buf_);
  bool have_spare_ = false;
  double spare_ = 0;
};

}  // namespace aloepri
