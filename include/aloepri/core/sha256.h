// Streaming SHA-256 for the model fingerprints: the x86 SHA extensions when the CPU has them
// (several times libsodium's portable code, which bounds the fingerprint of a large model),
// libsodium otherwise. Same digest either way.
#pragma once
#include <sodium.h>

#include <array>
#include <cstddef>
#include <cstdint>

namespace aloepri {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::array<uint8_t, 32> final();
  static bool hardware();  // true when update() runs on the SHA extensions

 private:
  bool hw_;
  crypto_hash_sha256_state st_{};  // portable path
  uint32_t h_[8];                  // hardware path: chaining value, pending bytes, length
  uint8_t buf_[64];
  size_t len_ = 0;
  uint64_t total_ = 0;
};

}  // namespace aloepri
