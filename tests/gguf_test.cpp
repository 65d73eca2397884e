// GGUF writer/reader: round trips of every value and tensor type, writer misuse, and every
// malformed-file case the reader must reject with an Error naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <limits>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/core/output.h"
#include "support/paths.h"

using namespace aloepri;
using namespace aloepri::gguf;
namespace at = aloepri::testing;
namespace fs = std::filesystem;

namespace {

// A hand-rolled GGUF byte builder, independent of GGUFWriter, so reader tests do not merely
// check the writer against itself and can place arbitrary (broken) values anywhere.
struct Bytes {
  std::string b;
  template <class T>
  Bytes& put(T v) {
    char tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.append(tmp, sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
    return *this;
  }
  Bytes& pad(size_t align) {
    while (b.size() % align) b.push_back('\0');
    return *this;
  }
  size_t size() const { return b.size(); }
};

// A valid file: 2 KVs (alignment, a string), 2 F32 tensors of 4 and 3 elements.
// Records the byte positions of fields the malformed cases patch.
struct Sample {
  Bytes f;
  size_t pos_kv_count, pos_tensor_count, pos_str_len, pos_t0_ndims, pos_t0_type, pos_t0_offset, pos_t1_offset,
      pos_kv1_type, data_start;
};

Sample sample() {
  Sample s;
  Bytes& f = s.f;
  f.put<uint32_t>(kMagic).put<uint32_t>(3);
  s.pos_tensor_count = f.size();
  f.put<uint64_t>(2);
  s.pos_kv_count = f.size();
  f.put<uint64_t>(2);
  f.str("general.alignment").put<uint32_t>(uint32_t(ValueType::UINT32)).put<uint32_t>(32);
  f.str("general.name");
  s.pos_kv1_type = f.size();
  f.put<uint32_t>(uint32_t(ValueType::STRING));
  s.pos_str_len = f.size();
  f.str("tiny");
  f.str("a");
  s.pos_t0_ndims = f.size();
  f.put<uint32_t>(2).put<uint64_t>(2).put<uint64_t>(2);
  s.pos_t0_type = f.size();
  f.put<uint32_t>(0);
  s.pos_t0_offset = f.size();
  f.put<uint64_t>(0);
  f.str("b").put<uint32_t>(1).put<uint64_t>(3).put<uint32_t>(0);
  s.pos_t1_offset = f.size();
  f.put<uint64_t>(32);
  f.pad(32);
  s.data_start = f.size();
  for (float x : {1.f, 2.f, 3.f, 4.f}) f.put<float>(x);
  f.pad(32);
  for (float x : {5.f, 6.f, 7.f}) f.put<float>(x);
  return s;
}

template <class T>
void patch(std::string& b, size_t pos, T v) {
  std::memcpy(&b[pos], &v, sizeof(T));
}

// Parse from memory; returns the error message ("" if it parsed).
std::string parse_error(const std::string& bytes, const std::string& name = "test.gguf") {
  try {
    GGUFReader r(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
    return "";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), name) << "error must name the file: " << e.what();
    EXPECT_EQ(e.code(), kExitBadInput);
    return e.what();
  }
}

void expect_error(const std::string& bytes, const std::string& needle) {
  std::string msg = parse_error(bytes);
  EXPECT_NE(msg, "") << "expected an error mentioning '" << needle << "'";
  EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
}

}  // namespace

TEST(GGUF, HandBuiltSampleParses) {
  Sample s = sample();
  GGUFReader r(reinterpret_cast<const uint8_t*>(s.f.b.data()), s.f.size(), "sample");
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_EQ(r.data_offset(), s.data_start);
  EXPECT_EQ(r.get("general.name").as_string(), "tiny");
  ASSERT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.tensor("a").ne, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(r.read_f32("a"), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(r.read_f32("b"), (std::vector<float>{5, 6, 7}));
}

TEST(GGUF, RoundTripOfEveryValueAndTensorType) {
  std::string dir = at::scratch_dir("gguf_roundtrip");
  std::string path = dir + "/all.gguf";
  std::vector<KV> kvs = {
      {"t.u8", Value::u8(250)},
      {"t.i8", Value::i8(-100)},
      {"t.u16", Value::u16(65000)},
      {"t.i16", Value::i16(-32000)},
      {"t.u32", Value::u32(4000000000u)},
      {"t.i32", Value::i32(-2000000000)},
      {"t.u64", Value::u64(std::numeric_limits<uint64_t>::max())},
      {"t.i64", Value::i64(std::numeric_limits<int64_t>::min())},
      {"t.f32", Value::f32(1.5e-6f)},
      {"t.f64", Value::f64(3.141592653589793)},
      {"t.bool_t", Value::boolean(true)},
      {"t.bool_f", Value::boolean(false)},
      {"t.str", Value::string("h\xc3\xa9llo \xe2\x96\x81 world")},
      {"t.empty_str", Value::string("")},
      {"t.arr_str", Value::array_strings({"a", "", "\xc4\xa0" "b c", std::string("nul\0in", 6)})},
      {"t.arr_i32", Value::array_i32({1, -2, 2147483647})},
      {"t.arr_f32", Value::array_f32({0.5f, -1e30f, 7.0f})},
      {"t.arr_u8", Value::array(ValueType::UINT8, std::vector<uint64_t>{0, 255})},
      {"t.arr_i8", Value::array(ValueType::INT8, std::vector<int64_t>{-128, 127})},
      {"t.arr_u16", Value::array(ValueType::UINT16, std::vector<uint64_t>{1, 65535})},
      {"t.arr_i16", Value::array(ValueType::INT16, std::vector<int64_t>{-32768})},
      {"t.arr_u32", Value::array(ValueType::UINT32, std::vector<uint64_t>{7, 4294967295u})},
      {"t.arr_u64", Value::array(ValueType::UINT64, std::vector<uint64_t>{1ull << 63})},
      {"t.arr_i64", Value::array(ValueType::INT64, std::vector<int64_t>{-(1ll << 62)})},
      {"t.arr_f64", Value::array(ValueType::FLOAT64, std::vector<double>{1e300, -0.0})},
      {"t.arr_bool", Value::array(ValueType::BOOL, std::vector<uint64_t>{1, 0, 1})},
      {"t.arr_empty", Value::array_i32({})},
  };
  // Tensor data: a 3x5 F32 matrix, a 4x2 F16 matrix, a 1-D BF16 vector, a 3-D F32 tensor.
  std::vector<float> a(15), c(7), d(2 * 3 * 4);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.25f - 1;
  for (size_t i = 0; i < c.size(); ++i) c[i] = float(i) + 0.5f;
  for (size_t i = 0; i < d.size(); ++i) d[i] = -float(i);
  std::vector<uint16_t> b(8), cb(7);
  for (size_t i = 0; i < b.size(); ++i) b[i] = f32_to_f16(float(i) / 3);
  for (size_t i = 0; i < c.size(); ++i) cb[i] = f32_to_bf16(c[i]);
  {
    GGUFWriter w(path);
    for (auto& kv : kvs) w.set(kv.first, kv.second);
    w.add_tensor("mat_f32", {5, 3}, GGMLType::F32);
    w.add_tensor("mat_f16", {2, 4}, GGMLType::F16);
    w.add_tensor("vec_bf16", {7}, GGMLType::BF16);
    w.add_tensor("cube", {4, 3, 2}, GGMLType::F32);
    w.write_tensor("mat_f32", a.data(), a.size() * 4);
    w.write_tensor("mat_f16", b.data(), b.size() * 2);
    w.begin_tensor("vec_bf16");  // streamed in two pieces
    w.write_data(cb.data(), 6);
    w.write_data(cb.data() + 3, 8);
    w.end_tensor();
    w.write_tensor("cube", d.data(), d.size() * 4);
    EXPECT_FALSE(fs::exists(path)) << "nothing at the final path before finish()";
    w.finish();
  }
  GGUFReader r(path);
  EXPECT_EQ(r.version(), 3u);
  ASSERT_EQ(r.metadata().size(), kvs.size() + 1);
  EXPECT_EQ(r.metadata()[0].first, "general.alignment");
  EXPECT_EQ(r.get("general.alignment").as_u64(), 32u);
  for (size_t i = 0; i < kvs.size(); ++i) {
    EXPECT_EQ(r.metadata()[i + 1].first, kvs[i].first) << "order is preserved";
    EXPECT_TRUE(r.metadata()[i + 1].second == kvs[i].second) << kvs[i].first;
  }
  EXPECT_EQ(r.get("t.f32").as_f64(), double(1.5e-6f));
  EXPECT_EQ(r.get("t.arr_str").strings()[3], std::string("nul\0in", 6));
  EXPECT_EQ(r.get("t.arr_str").elem_type(), ValueType::STRING);
  EXPECT_EQ(r.get("t.u64").as_u64(), std::numeric_limits<uint64_t>::max());
  EXPECT_THROW(r.get("t.u64").as_i64("t.u64"), Error);
  EXPECT_THROW(r.get("t.str").as_u64("t.str"), Error);
  EXPECT_THROW(r.get("missing"), Error);

  ASSERT_EQ(r.tensors().size(), 4u);
  for (const auto& t : r.tensors()) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_EQ((t.data - r.tensors()[0].data + r.data_offset()) % 32, 0u);
  }
  EXPECT_EQ(r.data_offset() % 32, 0u);
  EXPECT_EQ(r.tensor("mat_f32").type, GGMLType::F32);
  EXPECT_EQ(r.tensor("mat_f32").ne, (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(r.read_f32("mat_f32"), a);
  EXPECT_EQ(r.tensor("mat_f16").type, GGMLType::F16);
  EXPECT_EQ(std::memcmp(r.tensor("mat_f16").data, b.data(), 16), 0);
  EXPECT_EQ(r.tensor("vec_bf16").type, GGMLType::BF16);
  std::vector<uint16_t> want = {cb[0], cb[1], cb[2], cb[3], cb[4], cb[5], cb[6]};
  EXPECT_EQ(std::memcmp(r.tensor("vec_bf16").data, want.data(), 14), 0);
  EXPECT_EQ(r.read_f32("vec_bf16"), c);  // these halves are exact in bf16
  EXPECT_EQ(r.tensor("cube").ne, (std::vector<int64_t>{4, 3, 2}));
  EXPECT_EQ(r.read_f32("cube"), d);
  EXPECT_EQ(fs::file_size(path) % 32, 0u);
}

TEST(GGUF, CustomAlignmentAndNoTensors) {
  std::string dir = at::scratch_dir("gguf_align");
  {
    GGUFWriter w(dir + "/a64.gguf", false, 64);
    w.set("x", Value::u32(1));
    w.add_tensor("t0", {3}, GGMLType::F32);
    w.add_tensor("t1", {1}, GGMLType::F32);
    float v[3] = {1, 2, 3};
    w.write_tensor("t0", v, 12);
    w.write_tensor("t1", v, 4);
    w.finish();
  }
  GGUFReader r(dir + "/a64.gguf");
  EXPECT_EQ(r.alignment(), 64u);
  EXPECT_EQ(r.tensor("t1").offset, 64u);
  EXPECT_EQ(r.data_offset() % 64, 0u);
  {
    GGUFWriter w(dir + "/meta.gguf");
    w.set("only", Value::string("metadata"));
    w.finish();
  }
  GGUFReader m(dir + "/meta.gguf");
  EXPECT_TRUE(m.tensors().empty());
  EXPECT_EQ(m.get("only").as_string(), "metadata");
  EXPECT_THROW(GGUFWriter(dir + "/bad.gguf", false, 48), Error);
}

TEST(GGUF, WriterRejectsMisuseAndLeavesNothingBehind) {
  std::string dir = at::scratch_dir("gguf_misuse");
  std::string p = dir + "/m.gguf";
  float v[4] = {};
  {
    GGUFWriter w(p);
    w.set("k", Value::u32(1));
    EXPECT_THROW(w.set("k", Value::u32(2)), Error);
    EXPECT_THROW(w.set("general.alignment", Value::u32(16)), Error);
    w.add_tensor("a", {4}, GGMLType::F32);
    w.add_tensor("b", {2}, GGMLType::F16);
    EXPECT_THROW(w.add_tensor("a", {4}, GGMLType::F32), Error);
    EXPECT_THROW(w.add_tensor("z", {0}, GGMLType::F32), Error);
    EXPECT_THROW(w.add_tensor("z", {1, 1, 1, 1, 1}, GGMLType::F32), Error);
    EXPECT_THROW(w.add_tensor(std::string(64, 'n'), {1}, GGMLType::F32), Error);
    EXPECT_THROW(w.add_tensor("q", {33}, GGMLType::Q4_0), Error);  // not a whole block
    EXPECT_THROW(w.write_tensor("b", v, 4), Error);                  // out of order
  }
  EXPECT_FALSE(fs::exists(p));
  {
    GGUFWriter w(p);
    w.add_tensor("a", {4}, GGMLType::F32);
    EXPECT_THROW(w.write_tensor("a", v, 12), Error);  // short
  }
  {
    GGUFWriter w(p);
    w.add_tensor("a", {4}, GGMLType::F32);
    w.begin_tensor("a");
    EXPECT_THROW(w.write_data(v, 20), Error);  // too long
  }
  {
    GGUFWriter w(p);
    w.add_tensor("a", {4}, GGMLType::F32);
    w.add_tensor("b", {4}, GGMLType::F32);
    w.write_tensor("a", v, 16);
    EXPECT_THROW(w.set("late", Value::u32(1)), Error);
    EXPECT_THROW(w.add_tensor("c", {1}, GGMLType::F32), Error);
    EXPECT_THROW(w.finish(), Error);  // b never written
  }
  EXPECT_FALSE(fs::exists(p));
  for (auto& e : fs::directory_iterator(dir)) ADD_FAILURE() << "left behind: " << e.path();
  // Existing output: refused unless overwrite.
  write_file_atomic(p, "old");
  try {
    GGUFWriter w(p);
    ADD_FAILURE() << "overwrote without permission";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
  }
  {
    GGUFWriter w(p, /*overwrite=*/true);
    w.finish();
  }
  EXPECT_NO_THROW(GGUFReader{p});
}

TEST(GGUF, ValueRangeChecks) {
  EXPECT_THROW(Value::array(ValueType::UINT8, std::vector<uint64_t>{256}), Error);
  EXPECT_THROW(Value::array(ValueType::INT8, std::vector<int64_t>{-129}), Error);
  EXPECT_THROW(Value::array(ValueType::UINT32, std::vector<int64_t>{1}), Error);  // storage mismatch
  EXPECT_THROW(Value::array(ValueType::ARRAY, std::vector<uint64_t>{}), Error);   // nested
  EXPECT_EQ(Value::i32(-5).as_i64(), -5);
  EXPECT_THROW(Value::i32(-5).as_u64("k"), Error);
  EXPECT_EQ(Value::u32(7).as_f64(), 7.0);
  EXPECT_THROW(Value::u32(1).as_bool("k"), Error);
  EXPECT_THROW(Value::array_i32({1}).as_i64("k"), Error);
}

// ---- malformed files ----

TEST(GGUFMalformed, BadMagic) {
  Sample s = sample();
  s.f.b[0] = 'X';
  expect_error(s.f.b, "bad magic 'XGUF'");
  expect_error("GG", "too short");
  expect_error(std::string(), "too short");
}

TEST(GGUFMalformed, UnsupportedVersion) {
  Sample s = sample();
  patch<uint32_t>(s.f.b, 4, 4);
  expect_error(s.f.b, "unsupported GGUF version 4");
  patch<uint32_t>(s.f.b, 4, 1);
  expect_error(s.f.b, "unsupported GGUF version 1");
}

TEST(GGUFMalformed, EveryTruncationIsAnError) {
  Sample s = sample();
  // Every cut inside the header, metadata, tensor infos and data must be rejected, never crash.
  for (size_t n = 0; n < s.f.size(); ++n) {
    std::string cut = s.f.b.substr(0, n);
    std::string msg = parse_error(cut);
    EXPECT_NE(msg, "") << "truncation at " << n << " bytes was accepted";
  }
  expect_error(s.f.b.substr(0, 30), "truncated");
  expect_error(s.f.b.substr(0, s.data_start + 8), "extends past the end of the file");
}

TEST(GGUFMalformed, TruncatedString) {
  Sample s = sample();
  patch<uint64_t>(s.f.b, s.pos_str_len, 1ull << 40);
  expect_error(s.f.b, "has length 1099511627776 but only");
}

TEST(GGUFMalformed, AbsurdCounts) {
  Sample s = sample();
  std::string b = s.f.b;
  patch<uint64_t>(b, s.pos_kv_count, 1ull << 60);
  expect_error(b, "absurd metadata count");
  b = s.f.b;
  patch<uint64_t>(b, s.pos_tensor_count, 1ull << 60);
  expect_error(b, "absurd tensor count");
  // An array whose count cannot fit in the file.
  Bytes f;
  f.put<uint32_t>(kMagic).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
  f.str("arr").put<uint32_t>(uint32_t(ValueType::ARRAY)).put<uint32_t>(uint32_t(ValueType::UINT64));
  f.put<uint64_t>(1ull << 61).put<uint64_t>(0);
  expect_error(f.b, "cannot fit");
}

TEST(GGUFMalformed, BadTypesAndValues) {
  Sample s = sample();
  std::string b = s.f.b;
  patch<uint32_t>(b, s.pos_kv1_type, 13);
  expect_error(b, "unknown value type 13");
  b = s.f.b;
  patch<uint32_t>(b, s.pos_t0_type, 99);
  expect_error(b, "unknown ggml type 99");
  b = s.f.b;
  patch<uint32_t>(b, s.pos_t0_ndims, 5);
  expect_error(b, "has 5 dimensions");
  b = s.f.b;
  patch<uint32_t>(b, s.pos_t0_ndims, 0);
  expect_error(b, "has 0 dimensions");

  auto one_kv = [](ValueType t, auto write) {
    Bytes f;
    f.put<uint32_t>(kMagic).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
    f.str("k").put<uint32_t>(uint32_t(t));
    write(f);
    return f.b;
  };
  expect_error(one_kv(ValueType::BOOL, [](Bytes& f) { f.put<uint8_t>(2); }), "neither 0 nor 1");
  expect_error(one_kv(ValueType::ARRAY,
                      [](Bytes& f) { f.put<uint32_t>(uint32_t(ValueType::ARRAY)).put<uint64_t>(0); }),
               "nested arrays");
  expect_error(one_kv(ValueType::ARRAY, [](Bytes& f) { f.put<uint32_t>(77).put<uint64_t>(0); }),
               "unknown array element type 77");
  expect_error(one_kv(ValueType::UINT32, [](Bytes& f) { f.put<uint16_t>(1); }), "truncated");
  // Duplicate key.
  Bytes f;
  f.put<uint32_t>(kMagic).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(2);
  f.str("k").put<uint32_t>(uint32_t(ValueType::UINT8)).put<uint8_t>(1);
  f.str("k").put<uint32_t>(uint32_t(ValueType::UINT8)).put<uint8_t>(2);
  expect_error(f.b, "duplicate metadata key 'k'");
  // Alignment that is not a power of two, or of the wrong type.
  Bytes g;
  g.put<uint32_t>(kMagic).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
  g.str("general.alignment").put<uint32_t>(uint32_t(ValueType::UINT32)).put<uint32_t>(24);
  expect_error(g.b, "not a power of two");
  Bytes h;
  h.put<uint32_t>(kMagic).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
  h.str("general.alignment").put<uint32_t>(uint32_t(ValueType::UINT64)).put<uint64_t>(32);
  expect_error(h.b, "general.alignment must be UINT32");
}

TEST(GGUFMalformed, TensorPlacement) {
  Sample s = sample();
  std::string b = s.f.b;
  patch<uint64_t>(b, s.pos_t1_offset, 33);
  expect_error(b, "is not a multiple of the alignment 32");
  b = s.f.b;
  patch<uint64_t>(b, s.pos_t1_offset, 1u << 20);
  expect_error(b, "extends past the end of the file");
  b = s.f.b;
  patch<uint64_t>(b, s.pos_t1_offset, 0);  // same bytes as tensor 'a'
  expect_error(b, "overlaps");
  b = s.f.b;
  patch<uint64_t>(b, s.pos_t1_offset, std::numeric_limits<uint64_t>::max() - 31);  // offset + size wraps
  expect_error(b, "extends past the end of the file");
  // Duplicate tensor name.
  b = s.f.b;
  size_t name_b = s.pos_t0_offset + 8 + 8;  // offset of tensor 'a', then length of "b"
  b[name_b] = 'a';
  expect_error(b, "duplicate tensor 'a'");
}

// Found by gguf_fuzz in CI: one dimension of 2^62 F32 elements is 2^64 bytes, which wrapped to 0
// when only the later factors were checked, so the file parsed and read_f32 tried to allocate 2^62.
TEST(GGUFMalformed, SingleDimensionSizeOverflow) {
  for (uint32_t type : {0u /*F32*/, 1u /*F16*/}) {
    Bytes f;
    f.put<uint32_t>(kMagic).put<uint32_t>(3).put<uint64_t>(1).put<uint64_t>(0);
    f.str("t").put<uint32_t>(1).put<uint64_t>(type == 0 ? (1ull << 62) : (1ull << 63) - 1).put<uint32_t>(type);
    f.put<uint64_t>(0);
    f.pad(32);
    try {
      GGUFReader r(reinterpret_cast<const uint8_t*>(f.b.data()), f.b.size(), "test.gguf");
      ADD_FAILURE() << "a tensor of 2^64 bytes parsed";
    } catch (const Error& e) {
      EXPECT_EQ(e.where(), "test.gguf: tensor 't'") << e.what();  // the file and the tensor
      EXPECT_NE(std::string(e.what()).find("tensor size overflows"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(ggml_nbytes(GGMLType::F32, {int64_t(1) << 62}, "x"), Error);
  EXPECT_EQ(ggml_nbytes(GGMLType::F32, {int64_t(1) << 60}, "x"), uint64_t(1) << 62);
}

TEST(GGUFMalformed, FileErrorsNameThePath) {
  std::string dir = at::scratch_dir("gguf_file_errors");
  std::string p = dir + "/broken.gguf";
  Sample s = sample();
  write_file_atomic(p, s.f.b.substr(0, 40));
  try {
    GGUFReader r(p);
    ADD_FAILURE() << "accepted a truncated file";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), p);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  EXPECT_THROW(GGUFReader(dir + "/missing.gguf"), Error);
}
