// safetensors: writer -> reader round trips (single file and sharded, each dtype), the on-disk
// layout the spec prescribes, RNE conversion through the writer, and atomic-output behaviour.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/core/rng.h"
#include "aloepri/formats/safetensors.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;
using aloepri::testing::scratch_dir;

namespace {

std::vector<float> random_values(size_t n, const std::string& domain) {
  Seed s{};
  s[0] = 42;
  RngStream r(s, domain);
  std::vector<float> v(n);
  r.fill_normal(v.data(), n, 3.0);
  return v;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> dir_listing(const std::string& d) {
  std::vector<std::string> v;
  for (auto& e : fs::directory_iterator(d)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

class RoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(RoundTrip, SingleFileKeepsNamesShapesAndValues) {
  const DType dt = GetParam();
  std::string dir = scratch_dir("st_single_" + dtype_name(dt)) + "/out";
  struct T {
    std::string name;
    std::vector<int64_t> shape;
  };
  // Odd sizes on purpose: with F16/BF16 the tensor after "b" starts at an address that is not a
  // multiple of 4, which to_f32 must cope with. A scalar and an empty tensor are legal too.
  std::vector<T> ts = {{"a.weight", {3, 5}}, {"b", {7}}, {"c.scalar", {}}, {"d.empty", {0, 4}},
                       {"z.last", {2, 3, 4}}};
  std::map<std::string, std::vector<float>> vals;
  {
    SafetensorsWriter w(dir);
    for (auto& t : ts) w.add({t.name, dt, t.shape});
    for (auto& t : ts) {
      int64_t n = 1;
      for (auto d : t.shape) n *= d;
      vals[t.name] = random_values(size_t(n), t.name);
      w.write_f32(t.name, vals[t.name].data(), vals[t.name].size());
    }
    w.finish();
    ASSERT_EQ(w.files().size(), 1u);
    EXPECT_EQ(fs::path(w.files()[0]).filename(), "model.safetensors");
  }
  EXPECT_EQ(dir_listing(dir), std::vector<std::string>{"model.safetensors"});

  SafetensorsReader r(dir);
  EXPECT_EQ(r.names().size(), ts.size());
  EXPECT_EQ(r.metadata().at("format"), "pt");
  for (auto& t : ts) {
    const TensorView& v = r.get(t.name);
    EXPECT_EQ(v.dtype, dt);
    EXPECT_EQ(v.shape, t.shape);
    Tensor f = v.to_f32();
    ASSERT_EQ(f.data.size(), vals[t.name].size());
    for (size_t i = 0; i < f.data.size(); ++i) {
      float want = vals[t.name][i];
      if (dt == DType::F16) want = f16_to_f32(f32_to_f16(want));
      if (dt == DType::BF16) want = bf16_to_f32(f32_to_bf16(want));
      ASSERT_EQ(f.data[i], want) << t.name << "[" << i << "]";
    }
  }
}

TEST_P(RoundTrip, ShardedSplitsInDeclaredOrderAndIndexesEveryTensor) {
  const DType dt = GetParam();
  std::string dir = scratch_dir("st_sharded_" + dtype_name(dt)) + "/out";
  const size_t es = dtype_size(dt);
  // 10 tensors of 100 elements; shards of at most 300 elements -> 4 shards (3+3+3+1).
  std::vector<std::string> names;
  for (int i = 0; i < 10; ++i) names.push_back("layer." + std::to_string(i) + ".w");
  {
    SafetensorsWriter w(dir, 300 * es);
    for (auto& n : names) w.add({n, dt, {10, 10}});
    for (auto& n : names) {
      auto v = random_values(100, n);
      w.write_f32(n, v.data(), v.size());
    }
    w.finish();
    EXPECT_EQ(w.files().size(), 4u);
  }
  EXPECT_EQ(dir_listing(dir),
            (std::vector<std::string>{"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                      "model.safetensors.index.json"}));
  auto idx = nlohmann::json::parse(slurp(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), 10 * 100 * es);
  EXPECT_EQ(idx["weight_map"].size(), 10u);
  EXPECT_EQ(idx["weight_map"]["layer.0.w"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(idx["weight_map"]["layer.3.w"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(idx["weight_map"]["layer.9.w"], "model-00004-of-00004.safetensors");

  // Reading through the directory, the index file itself, and a single shard.
  for (std::string p : {dir, dir + "/model.safetensors.index.json"}) {
    SafetensorsReader r(p);
    EXPECT_EQ(r.files().size(), 4u);
    EXPECT_EQ(r.names().size(), 10u);
    EXPECT_EQ(r.total_bytes(), 10 * 100 * es);
    for (auto& n : names) {
      auto want = random_values(100, n);
      Tensor f = r.get(n).to_f32();
      for (size_t i = 0; i < 100; ++i) {
        float e = want[i];
        if (dt == DType::F16) e = f16_to_f32(f32_to_f16(e));
        if (dt == DType::BF16) e = bf16_to_f32(f32_to_bf16(e));
        ASSERT_EQ(f.data[i], e);
      }
    }
  }
  SafetensorsReader one(dir + "/model-00004-of-00004.safetensors");
  EXPECT_EQ(one.names(), std::vector<std::string>{"layer.9.w"});
}

INSTANTIATE_TEST_SUITE_P(DTypes, RoundTrip, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return dtype_name(info.param); });

TEST(SafetensorsWriter, LayoutFollowsTheSpec) {
  std::string dir = scratch_dir("st_layout") + "/out";
  std::vector<float> a = {1, 2, 3}, b = {4, 5};
  {
    SafetensorsWriter w(dir);
    w.add({"second_declared_first", DType::F32, {3}});
    w.add({"a_small", DType::F32, {2}});
    w.write_f32("second_declared_first", a.data(), 3);
    w.write_f32("a_small", b.data(), 2);
    w.finish();
  }
  std::string bytes = slurp(dir + "/model.safetensors");
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to 8 bytes";
  EXPECT_EQ(bytes.size(), 8 + n + 5 * 4);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header[0], '{');
  size_t end = header.find_last_not_of(' ');
  EXPECT_EQ(header[end], '}');
  auto h = nlohmann::json::parse(header);
  EXPECT_EQ(h["__metadata__"], (nlohmann::json{{"format", "pt"}}));
  // Declared order decides the layout, not the name order.
  EXPECT_EQ(h["second_declared_first"]["data_offsets"], (nlohmann::json{0, 12}));
  EXPECT_EQ(h["a_small"]["data_offsets"], (nlohmann::json{12, 20}));
  float first;
  std::memcpy(&first, bytes.data() + 8 + n, 4);
  EXPECT_EQ(first, 1.0f);
}

TEST(SafetensorsWriter, RoundsToNearestEvenWhenConverting) {
  std::string dir = scratch_dir("st_rne") + "/out";
  // Exact ties: 1 + 2^-8 sits halfway between two bf16 neighbours and must go to the even one
  // (1.0); 1 + 3*2^-8 goes up to 1 + 2^-6. For f16 the same at 2^-11.
  std::vector<float> bf = {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), -0.0f, INFINITY};
  std::vector<float> hf = {1.0f + std::ldexp(1.0f, -11), 1.0f + 3 * std::ldexp(1.0f, -11), 65520.0f,
                           std::ldexp(1.5f, -25)};
  {
    SafetensorsWriter w(dir);
    w.add({"bf", DType::BF16, {4}});
    w.add({"hf", DType::F16, {4}});
    w.write_f32("bf", bf.data(), 4);
    w.write_f32("hf", hf.data(), 4);
    w.finish();
  }
  SafetensorsReader r(dir);
  const uint16_t* b = reinterpret_cast<const uint16_t*>(r.get("bf").data);
  EXPECT_EQ(b[0], 0x3f80);
  EXPECT_EQ(b[1], 0x3f82);
  EXPECT_EQ(b[2], 0x8000);
  EXPECT_EQ(b[3], 0x7f80);
  uint16_t h[4];
  std::memcpy(h, r.get("hf").data, 8);
  EXPECT_EQ(h[0], 0x3c00);
  EXPECT_EQ(h[1], 0x3c02);
  EXPECT_EQ(h[2], 0x7c00);
  EXPECT_EQ(h[3], 0x0001);
}

TEST(SafetensorsWriter, RawWritesAndF64ReadBack) {
  std::string dir = scratch_dir("st_f64") + "/out";
  std::vector<double> d = {0.1, -2.5, 1e300};
  {
    SafetensorsWriter w(dir);
    w.add({"d", DType::F64, {3}});
    w.write("d", d.data(), d.size() * 8);
    w.finish();
  }
  Tensor t = SafetensorsReader(dir).get("d").to_f32();
  EXPECT_EQ(t.data[0], float(0.1));
  EXPECT_EQ(t.data[1], -2.5f);
  EXPECT_TRUE(std::isinf(t.data[2]));
}

TEST(SafetensorsWriter, NothingIsVisibleUntilFinishAndAbandonedLeavesNothing) {
  std::string base = scratch_dir("st_abandon");
  std::string dir = base + "/out";
  {
    SafetensorsWriter w(dir, 16);
    w.add({"x", DType::F32, {4}});
    w.add({"y", DType::F32, {4}});
    std::vector<float> v(4, 1.0f);
    w.write_f32("x", v.data(), 4);
    // Half written: no final file name exists yet.
    EXPECT_FALSE(fs::exists(dir + "/model-00001-of-00002.safetensors"));
    EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  }  // abandoned
  EXPECT_FALSE(fs::exists(dir)) << "the writer created the directory and must remove it again";

  // Into an existing directory: leaves it as it was.
  fs::create_directories(dir);
  {
    SafetensorsWriter w(dir);
    w.add({"x", DType::F32, {4}});
  }
  EXPECT_TRUE(fs::exists(dir));
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(SafetensorsWriter, RefusesToOverwrite) {
  std::string dir = scratch_dir("st_exists");
  std::ofstream(dir + "/model.safetensors") << "precious";
  try {
    SafetensorsWriter w(dir);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos);
  }
  EXPECT_EQ(slurp(dir + "/model.safetensors"), "precious");

  // A shard name that already exists is refused before any data is written.
  std::string dir2 = scratch_dir("st_exists_shard");
  std::ofstream(dir2 + "/model-00002-of-00002.safetensors") << "precious";
  SafetensorsWriter w(dir2, 16);
  w.add({"x", DType::F32, {4}});
  w.add({"y", DType::F32, {4}});
  std::vector<float> v(4, 1.0f);
  try {
    w.write_f32("x", v.data(), 4);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
  }
  EXPECT_EQ(slurp(dir2 + "/model-00002-of-00002.safetensors"), "precious");
}

TEST(SafetensorsWriter, RejectsMisuse) {
  std::string dir = scratch_dir("st_misuse") + "/out";
  SafetensorsWriter w(dir);
  w.add({"a", DType::F32, {2}});
  w.add({"b", DType::F16, {2}});
  EXPECT_THROW(w.add({"a", DType::F32, {2}}), Error);  // declared twice
  std::vector<float> v(2, 0.5f);
  EXPECT_THROW(w.write_f32("b", v.data(), 2), Error);  // out of order
  EXPECT_THROW(w.write_f32("nope", v.data(), 2), Error);
  EXPECT_THROW(w.write("a", v.data(), 4), Error);       // wrong size
  w.write_f32("a", v.data(), 2);
  EXPECT_THROW(w.add({"c", DType::F32, {1}}), Error);  // declared after writing began
  try {
    w.finish();
    FAIL() << "finish with an unwritten tensor must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
}

TEST(SafetensorsReader, MissingTensorErrorNamesIt) {
  std::string dir = scratch_dir("st_missing") + "/out";
  {
    SafetensorsWriter w(dir);
    w.add({"a", DType::F32, {1}});
    float x = 1;
    w.write_f32("a", &x, 1);
    w.finish();
  }
  SafetensorsReader r(dir);
  EXPECT_TRUE(r.has("a"));
  EXPECT_FALSE(r.has("b"));
  try {
    r.get("b");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos);
  }
}
