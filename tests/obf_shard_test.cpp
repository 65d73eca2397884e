// Speed work on the obfuscation, behaviour unchanged: the bulk noise draws are normal()'s bit for
// bit (and pinned to a recorded hash), the SHA-256 of the fingerprints is libsodium's, and a
// sharded obfuscation merges into the single run's files byte for byte.
#include <gtest/gtest.h>
#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "aloepri/core/error.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/core/rng.h"
#include "aloepri/core/sha256.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;

namespace {

Seed fixed_seed(uint8_t v) {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(v * 31 + i * 7);
  return s;
}

std::string sha256_hex(const void* p, size_t n) {
  unsigned char h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(h, static_cast<const unsigned char*>(p), n);
  char hex[2 * sizeof h + 1];
  sodium_bin2hex(hex, sizeof hex, h, sizeof h);
  return hex;
}

std::string file_bytes(const fs::path& p) { return read_file(p.string()); }

}  // namespace

TEST(RngNormals, BulkDrawsEqualNormalBitForBitAndLeaveTheSameState) {
  // Lengths around the bulk threshold and block size, odd and even, from states with a cached
  // spare and a keystream position that is not 16-byte aligned.
  for (size_t n : {size_t(0), size_t(1), size_t(2047), size_t(2048), size_t(2049), size_t(8193), size_t(100001)}) {
    for (int prefix : {0, 1, 2}) {
      RngStream a(fixed_seed(1), "test/normals"), b(fixed_seed(1), "test/normals");
      if (prefix == 1) {  // a spare is pending
        EXPECT_EQ(a.normal(), b.normal());
      } else if (prefix == 2) {  // 8 bytes into the stream
        EXPECT_EQ(a.next_u64(), b.next_u64());
      }
      std::vector<double> bulk(n), ref(n);
      a.normals(bulk.data(), n);
      for (auto& x : ref) x = b.normal();
      ASSERT_EQ(0, std::memcmp(bulk.data(), ref.data(), n * sizeof(double))) << "n " << n << " prefix " << prefix;
      // Same state after: the next draws agree, spare included.
      for (int i = 0; i < 3; ++i) ASSERT_EQ(a.normal(), b.normal()) << "n " << n << " prefix " << prefix;
      ASSERT_EQ(a.next_u64(), b.next_u64());
    }
  }
}

TEST(RngNormals, NoiseStreamMatchesTheRecordedDraws) {
  // The obfuscated weights of every existing key depend on this stream: ChaCha20 keystream,
  // 53-bit uniforms, Box-Muller with glibc's log/sqrt/sin/cos. Recorded before the bulk path.
  RngStream r(fixed_seed(2), "noise/embed");
  std::vector<double> z(4096);
  for (auto& x : z) x = r.normal();
  EXPECT_EQ(sha256_hex(z.data(), z.size() * sizeof(double)),
            "9ff77aa6777ad73150dd487ab679c83e18e8ac4b3b1f62108f71509f7f83e1dd");
}

TEST(ObfNoise, VocabMatrixNoiseIsThePerElementDraw) {
  // Identity key matrix and permutation: the output is the noised input, which must be
  // float(x + sigma z) with z the stream's normal() draws in row order, for both noise scales.
  const int64_t n = 700, d = 48;  // several noise blocks, a partial last one
  std::vector<float> x(static_cast<size_t>(n * d));
  std::mt19937 g(5);
  std::normal_distribution<float> nd(0.f, 0.02f);
  for (auto& v : x) v = nd(g);
  obf::RowFetch fetch = [&](int64_t r0, int64_t m, float* dst) {
    std::copy(x.begin() + r0 * d, x.begin() + (r0 + m) * d, dst);
  };
  std::vector<int64_t> tau(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tau[size_t(i)] = i;
  Tensor I({d, d});
  for (int64_t i = 0; i < d; ++i) I.at(i, i) = 1.0f;
  for (auto ns : {obf::NoiseScale::Global, obf::NoiseScale::PerRow}) {
    RngStream rng(fixed_seed(3), "noise/embed"), ref(fixed_seed(3), "noise/embed");
    Tensor out = obf::transform_vocab_matrix(n, d, fetch, tau, 0.5, ns, rng, {}, I, false);
    double sum = 0, s2 = 0;
    for (float v : x) sum += v;
    const double mean = sum / double(n * d);
    for (float v : x) s2 += (v - mean) * (v - mean);
    const double gstd = std::sqrt(s2 / double(n * d));
    for (int64_t r = 0; r < n; ++r) {
      const float* row = x.data() + r * d;
      double rs = 0, rs2 = 0;
      for (int64_t k = 0; k < d; ++k) rs += row[k];
      for (int64_t k = 0; k < d; ++k) rs2 += (row[k] - rs / double(d)) * (row[k] - rs / double(d));
      const double sigma = 0.5 * (ns == obf::NoiseScale::Global ? gstd : std::sqrt(rs2 / double(d)));
      for (int64_t k = 0; k < d; ++k) {
        const float want = float(double(row[k]) + sigma * ref.normal());
        ASSERT_EQ(out.at(r, k), want) << "row " << r << " col " << k;
      }
    }
  }
}

TEST(Sha256, MatchesLibsodiumForEveryLengthAndSplit) {
  std::mt19937 g(9);
  std::vector<uint8_t> data(300000);
  for (auto& b : data) b = uint8_t(g());
  std::vector<size_t> lens;
  for (size_t n = 0; n <= 200; ++n) lens.push_back(n);
  lens.push_back(data.size());
  for (size_t n : lens) {
    unsigned char want[32];
    crypto_hash_sha256(want, data.data(), n);
    Sha256 h;
    // Uneven pieces: the buffered path, whole blocks, and the tail.
    size_t i = 0;
    while (i < n) {
      const size_t m = std::min<size_t>(n - i, 1 + g() % 150);
      h.update(data.data() + i, m);
      i += m;
    }
    const auto got = h.final();
    ASSERT_EQ(0, std::memcmp(want, got.data(), 32)) << "length " << n << (Sha256::hardware() ? " (SHA-NI)" : "");
  }
}

// The CPUID detection agrees with the kernel's view of the CPU, so the SHA-NI path above is the
// one tested wherever the CPU has it.
TEST(Sha256Hw, DetectionMatchesCpuinfo) {
  const std::string info = read_file("/proc/cpuinfo");
  if (info.empty()) GTEST_SKIP() << "no /proc/cpuinfo";
  const bool kernel_says = info.find(" sha_ni") != std::string::npos;
  EXPECT_EQ(Sha256::hardware(), kernel_says);
}

class ObfShard : public ::testing::Test {
 protected:
  static std::string plain() {
    static const std::string dir = [] {
      std::string d = aloepri::testing::scratch_dir("obf_shard_plain") + "/model";
      SynthOptions o;
      o.family = Family::Llama;
      o.preset = "tiny";
      o.layers = 5;
      o.heads = 4;
      o.kv_heads = 2;
      o.dtype = DType::BF16;
      o.max_shard_bytes = 1 << 20;  // a sharded input
      o.vocab_dir = aloepri::testing::vocab_dir("llama2");
      o.seed = 11;
      synthesize(o, d);
      return d;
    }();
    return dir;
  }
  static ObfuscateOptions options() {
    ObfuscateOptions opt;  // the report's parameters (the struct's defaults): noise, expansion, BlockPerm
    opt.max_shard_bytes = 4 << 20;  // a sharded output too
    return opt;
  }
};

TEST_F(ObfShard, MergedPartsAreByteIdenticalToASingleRun) {
  const Seed seed = fixed_seed(4);
  const std::string base = aloepri::testing::scratch_dir("obf_shard_out");
  const ObfuscateResult whole = obfuscate_model(plain(), seed, base + "/whole", options());
  // 3 parts; and 9 parts for 7 steps (L + 2), so some parts are empty.
  for (int N : {3, 9}) {
    const std::string out = base + "/sharded" + std::to_string(N);
    for (int i = N - 1; i >= 0; --i) {  // any order
      ObfuscateOptions o = options();
      o.shard_index = i;
      o.shard_count = N;
      obfuscate_model(plain(), seed, out, o);
    }
    EXPECT_TRUE(fs::is_directory(obfuscation_parts_dir(out)));
    const ObfuscateResult merged = merge_obfuscation_parts(plain(), seed, out, options());
    EXPECT_FALSE(fs::exists(obfuscation_parts_dir(out)));  // the parts are removed after the merge
    EXPECT_EQ(merged.kappas, whole.kappas);
    EXPECT_EQ(merged.obf_eps, whole.obf_eps);
    EXPECT_EQ(merged.plain_fingerprint, whole.plain_fingerprint);
    EXPECT_EQ(merged.obf_fingerprint, whole.obf_fingerprint);
    EXPECT_EQ(merged.key_record().params.dump(), whole.key_record().params.dump());
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(base + "/whole")) files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    ASSERT_GE(files.size(), 3u);  // shards, index, config
    size_t n_out = 0;
    for (const auto& e : fs::directory_iterator(out)) (void)e, ++n_out;
    EXPECT_EQ(n_out, files.size());
    for (const auto& f : files)
      EXPECT_TRUE(file_bytes(fs::path(base) / "whole" / f) == file_bytes(fs::path(out) / f)) << f << " N " << N;
  }
}

TEST_F(ObfShard, MergeRefusesMissingOrForeignParts) {
  const std::string out = aloepri::testing::scratch_dir("obf_shard_bad") + "/obf";
  ObfuscateOptions o = options();
  o.shard_count = 3;
  o.shard_index = 0;
  obfuscate_model(plain(), fixed_seed(5), out, o);
  o.shard_index = 2;
  obfuscate_model(plain(), fixed_seed(5), out, o);
  try {
    merge_obfuscation_parts(plain(), fixed_seed(5), out, options());
    FAIL() << "merged with part 1/3 missing";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("part-00001-of-00003.json"), std::string::npos) << e.what();
  }
  o.shard_index = 1;
  obfuscate_model(plain(), fixed_seed(6), out, o);  // another key
  try {
    merge_obfuscation_parts(plain(), fixed_seed(5), out, options());
    FAIL() << "merged a part of another key";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key_id"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));  // nothing half-merged
  // A part is never overwritten silently.
  EXPECT_THROW(obfuscate_model(plain(), fixed_seed(5), out, o), Error);
}
