#include "aloepri/core/rng.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

namespace aloepri {

static void ensure_sodium() {
  static const bool ok = sodium_init() >= 0;
  if (!ok) throw std::runtime_error("libsodium initialisation failed");
}

uint32_t random_below(uint32_t n) {
  if (n <= 1) return 0;
  ensure_sodium();
  return randombytes_uniform(n);
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

// ChaCha20 (IETF) keystream: 96-bit zero nonce, 32-bit block counter. One stream per domain,
// so 2^32 blocks x 64 bytes = 256 GiB per domain, far beyond any single object we draw.
static const unsigned char kNonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {0};

// dst[0..n) = keystream bytes [off, off + n) under key.
static void keystream_at(const uint8_t* key, uint64_t off, uint8_t* dst, size_t n) {
  uint64_t block = off / 64;
  const size_t skip = size_t(off % 64);
  if (skip) {
    uint8_t tmp[64] = {0};
    crypto_stream_chacha20_ietf_xor_ic(tmp, tmp, 64, kNonce, uint32_t(block), key);
    const size_t m = std::min(n, 64 - skip);
    std::memcpy(dst, tmp + skip, m);
    dst += m;
    n -= m;
    ++block;
  }
  if (!n) return;
  std::memset(dst, 0, n);
  crypto_stream_chacha20_ietf_xor_ic(dst, dst, n, kNonce, uint32_t(block), key);
}

void RngStream::refill() {
  std::fill(buf_.begin(), buf_.end(), 0);
  crypto_stream_chacha20_ietf_xor_ic(buf_.data(), buf_.data(), buf_.size(), kNonce,
                                     uint32_t(counter_), key_.data());
  counter_ += buf_.size() / 64;
  pos_ = 0;
}

uint64_t RngStream::offset() const { return counter_ * 64 - (buf_.size() - pos_); }

void RngStream::seek(uint64_t off) {
  counter_ = off / 64;
  refill();
  pos_ = size_t(off % 64);
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
  std::vector<double> z(std::min<size_t>(n, 1 << 16));
  for (size_t i = 0; i < n; i += z.size()) {
    const size_t m = std::min(z.size(), n - i);
    normals(z.data(), m);
    for (size_t j = 0; j < m; ++j) out[i + j] = float(z[j] * stddev);
  }
}

static uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

// Box-Muller pairs from 16 keystream bytes each, exactly as normal() computes them: out[2i] is
// the cosine draw, out[2i+1] the sine (normal()'s spare). Returns the number of pairs done
// before the first with u1 == 0 (normal() would reject it and draw again).
static size_t pairs_from_bytes(const uint8_t* ks, size_t pairs, double* out) {
  for (size_t i = 0; i < pairs; ++i) {
    const double u1 = double(le64(ks + 16 * i) >> 11) * 0x1.0p-53;
    if (u1 <= 0.0) return i;
    const double u2 = double(le64(ks + 16 * i + 8) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[2 * i] = r * std::cos(2 * M_PI * u2);
    out[2 * i + 1] = r * std::sin(2 * M_PI * u2);
  }
  return pairs;
}

size_t RngStream::bulk_pairs(double* out, size_t pairs) {
  // Keystream in blocks of kBlock pairs; threads take contiguous ranges of blocks.
  constexpr size_t kBlock = 4096;
  const uint64_t base = offset();
  const size_t nblocks = (pairs + kBlock - 1) / kBlock;
  const size_t nt = std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), nblocks));
  std::vector<size_t> first_bad(nt, SIZE_MAX);
  auto work = [&](size_t t) {
    std::vector<uint8_t> ks(16 * kBlock);
    for (size_t b = nblocks * t / nt; b < nblocks * (t + 1) / nt; ++b) {
      const size_t p0 = b * kBlock, m = std::min(kBlock, pairs - p0);
      keystream_at(key_.data(), base + 16 * p0, ks.data(), 16 * m);
      const size_t done = pairs_from_bytes(ks.data(), m, out + 2 * p0);
      if (done < m) {
        first_bad[t] = p0 + done;
        return;
      }
    }
  };
  if (nt == 1) {
    work(0);
  } else {
    std::vector<std::thread> th;
    for (size_t t = 1; t < nt; ++t) th.emplace_back(work, t);
    work(0);
    for (auto& x : th) x.join();
  }
  // Pairs before the first rejection are valid whichever thread met it.
  const size_t done = std::min(pairs, *std::min_element(first_bad.begin(), first_bad.end()));
  seek(base + 16 * done);
  return done;
}

void RngStream::normals(double* out, size_t n) {
  // Below this many pairs the threads and the seek cost more than they save.
  constexpr size_t kMinBulk = 1024;
  size_t i = 0;
  while (i < n) {
    if (have_spare_ || (n - i) / 2 < kMinBulk) {
      out[i++] = normal();
      continue;
    }
    const size_t pairs = (n - i) / 2, done = bulk_pairs(out + i, pairs);
    i += 2 * done;
    if (done < pairs) out[i++] = normal();  // the rejected u1: normal() redraws it
  }
}

}  // namespace aloepri
