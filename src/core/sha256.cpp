// SHA-256 (FIPS 180-4) with the x86 SHA-NI round instructions; see sha256.h.
#include "aloepri/core/sha256.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define ALOEPRI_SHA_NI 1
#endif

namespace aloepri {

namespace {

#ifdef ALOEPRI_SHA_NI
alignas(16) const uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

// h[8] (a..h) updated with `blocks` 64-byte blocks. The round instruction keeps the state as
// the two halves ABEF and CDGH and does two rounds per call, on the low two words of W + K.
__attribute__((target("sha,sse4.1"))) void compress_ni(uint32_t* h, const uint8_t* p, size_t blocks) {
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i dcba = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h));
  __m128i hgfe = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 4));
  __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
  __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
  __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
  __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
  for (; blocks; --blocks, p += 64) {
    const __m128i abef0 = abef, cdgh0 = cdgh;
    __m128i w[4];
    for (int i = 0; i < 4; ++i)
      w[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)), bswap);
    for (int g = 0; g < 16; ++g) {
      // w[g % 4] holds message words 4g .. 4g+3; the next group's is scheduled from the last four.
      if (g >= 4) {
        __m128i& cur = w[g % 4];
        const __m128i prev = w[(g + 3) % 4], prev2 = w[(g + 2) % 4];
        cur = _mm_sha256msg1_epu32(cur, w[(g + 1) % 4]);             // W[t-16] + s0(W[t-15])
        cur = _mm_add_epi32(cur, _mm_alignr_epi8(prev, prev2, 4));   // + W[t-7]
        cur = _mm_sha256msg2_epu32(cur, prev);                       // + s1(W[t-2])
      }
      __m128i wk = _mm_add_epi32(w[g % 4], _mm_load_si128(reinterpret_cast<const __m128i*>(kK + 4 * g)));
      cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);  // cdgh := ABEF after two rounds
      wk = _mm_shuffle_epi32(wk, 0x0E);
      abef = _mm_sha256rnds2_epu32(abef, cdgh, wk);  // two rounds on: the old ABEF is the new CDGH
    }
    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
  }
  __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
  __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
  dcba = _mm_blend_epi16(feba, dchg, 0xF0);
  hgfe = _mm_alignr_epi8(dchg, feba, 8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(h), dcba);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(h + 4), hgfe);
}
#endif

bool detect() {
#ifdef ALOEPRI_SHA_NI
  // CPUID directly: clang 14's __builtin_cpu_supports does not know "sha".
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1)) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (b & (1u << 29)) != 0;  // CPUID.(EAX=7, ECX=0):EBX[29] = SHA extensions
#else
  return false;
#endif
}

}  // namespace

bool Sha256::hardware() {
  static const bool hw = detect();
  return hw;
}

Sha256::Sha256() : hw_(hardware()) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::memcpy(h_, iv, sizeof h_);
  if (!hw_) crypto_hash_sha256_init(&st_);
}

void Sha256::update(const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  if (!hw_) {
    crypto_hash_sha256_update(&st_, p, n);
    return;
  }
#ifdef ALOEPRI_SHA_NI
  total_ += n;
  if (len_) {
    const size_t m = std::min(n, 64 - len_);
    std::memcpy(buf_ + len_, p, m);
    len_ += m;
    p += m;
    n -= m;
    if (len_ < 64) return;
    compress_ni(h_, buf_, 1);
    len_ = 0;
  }
  compress_ni(h_, p, n / 64);
  p += n / 64 * 64;
  n %= 64;
  std::memcpy(buf_, p, n);
  len_ = n;
#endif
}

std::array<uint8_t, 32> Sha256::final() {
  std::array<uint8_t, 32> out{};
  if (!hw_) {
    crypto_hash_sha256_final(&st_, out.data());
    return out;
  }
#ifdef ALOEPRI_SHA_NI
  // Padding: 0x80, zeros to 56 mod 64, the bit length big-endian.
  const uint64_t bits = total_ * 8;
  uint8_t pad[128] = {0x80};
  const size_t padlen = (len_ < 56 ? 56 : 120) - len_;
  for (int i = 0; i < 8; ++i) pad[padlen + i] = uint8_t(bits >> (56 - 8 * i));
  update(pad, padlen + 8);
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) out[4 * i + j] = uint8_t(h_[i] >> (24 - 8 * j));
#endif
  return out;
}

}  // namespace aloepri
