#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "aloepri/core/rng.h"
#include "support/paths.h"

using namespace aloepri;

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 neighbours 1 and 1+2^-7: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): goes up.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above halfway rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(3.4e38f))));
}

TEST(DType, F16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(DType, F16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // halfway to the next binade rounds to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half of smallest subnormal: tie -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -24)), 0x8001);
}

TEST(Rng, StreamsAreDeterministicAndDomainSeparated) {
  Seed s{};
  s[0] = 7;
  RngStream a(s, "tau"), b(s, "tau"), c(s, "keymat/base");
  uint64_t x = a.next_u64();
  EXPECT_EQ(x, b.next_u64());
  EXPECT_NE(x, c.next_u64());
  auto p = RngStream(s, "perm").permutation(1000);
  std::set<int64_t> uniq(p.begin(), p.end());
  EXPECT_EQ(uniq.size(), 1000u);
  EXPECT_EQ(*uniq.begin(), 0);
  EXPECT_EQ(*uniq.rbegin(), 999);
  // Normal draws have the right first two moments.
  RngStream n(s, "normal");
  double sum = 0, sq = 0;
  const int N = 200000;
  for (int i = 0; i < N; ++i) {
    double v = n.normal();
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / N, 0.0, 0.01);
  EXPECT_NEAR(sq / N, 1.0, 0.01);
}

TEST(Output, AtomicFileRefusesExistingAndCleansUp) {
  std::string dir = aloepri::testing::scratch_dir("atomic");
  std::string p = dir + "/out.bin";
  {
    AtomicFile f(p, false, 0600);
    f.write("abc");
    // not committed: destructor removes the temporary, no output appears
  }
  EXPECT_FALSE(std::filesystem::exists(p));
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  write_file_atomic(p, "hello", false, 0600);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  try {
    write_file_atomic(p, "other");
    FAIL() << "overwrote an existing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos);
  }
  EXPECT_EQ(read_file(p), "hello");
}
