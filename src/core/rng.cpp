#include "aloepri/rng.h"

#include <sodium.h>

#include <cmath>
#include <stdexcept>

namespace aloepri {

static void ensure_sodium() {
  static const bool ok = sodium_init() >= 0;
  if (!ok) throw std::runtime_error("libsodium initialisation failed");
}

Seed random_seed() {
  ensure_sodium();
  Seed s;
  randombytes_buf(s.data(), s.size());
  return s;
}

RngStream::RngStream(const Seed& seed, const std::string& domain) {
  ensure_sodium();
  std::string msg = "aloepri/v1/" + domain;
  crypto_generichash(key_.data(), key_.size(), reinterpret_cast<const unsigned char*>(msg.data()),
                     msg.size(), seed.data(), seed.size());
}

void RngStream::refill() {
  // ChaCha20 (IETF) keystream: 96-bit zero nonce, 32-bit block counter. One stream per domain,
  // so 2^32 blocks x 64 bytes = 256 GiB per domain, far beyond any single object we draw.
  static const unsigned char nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {0};
  std::fill(buf_.begin(), buf_.end(), 0);
  crypto_stream_chacha20_ietf_xor_ic(buf_.data(), buf_.data(), buf_.size(), nonce,
                                     uint32_t(counter_), key_.data());
  counter_ += buf_.size() / 64;
  pos_ = 0;
}

uint64_t RngStream::next_u64() {
  if (pos_ + 8 > buf_.size()) refill();
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(buf_[pos_ + i]) << (8 * i);
  pos_ += 8;
  return v;
}

double RngStream::uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }

double RngStream::normal() {
  if (have_spare_) {
    have_spare_ = false;
    return spare_;
  }
  double u1;
  do u1 = uniform(); while (u1 <= 0.0);
  double u2 = uniform();
  double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2 * M_PI * u2);
  have_spare_ = true;
  return r * std::cos(2 * M_PI * u2);
}

uint64_t RngStream::below(uint64_t n) {
  if (n <= 1) return 0;
  // Lemire-free rejection: accept values under the largest multiple of n.
  uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
  uint64_t v;
  do v = next_u64(); while (v >= limit);
  return v % n;
}

std::vector<int64_t> RngStream::permutation(int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[below(uint64_t(i) + 1)]);
  return p;
}

void RngStream::fill_normal(float* out, size_t n, double stddev) {
  for (size_t i = 0; i < n; ++i) out[i] = float(normal() * stddev);
}

}  // namespace aloepri
