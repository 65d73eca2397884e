// Quantized GGUF export (issue 7): ggml's Q8_0 / Q4_0 block layouts on hand-checked values,
// round-trip error bounds, the exporter's tensor-type rules, byte-exact agreement of an exported
// quantized tensor with quantizing the f32 export's values, and llama.cpp loading and running
// q8_0 / q4_0 exports with logits near the f32 export's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/formats/gguf_quant.h"
#include "aloepri/model/model.h"
#include "aloepri/engine/synth.h"
#include "support/llamacpp.h"
#include "support/paths.h"

using namespace aloepri;
using namespace aloepri::gguf;
namespace fs = std::filesystem;

TEST(GGUFQuant, Q8_0KnownBlock) {
  // amax 127 -> d = 1 exactly: codes are the values rounded half away from zero.
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 2.5f;    // -> 3 (round-half-even would give 2)
  x[2] = -2.5f;   // -> -3
  x[3] = 0.49f;   // -> 0
  x[4] = -126.6f; // -> -127
  x[31] = 1.5f;   // -> 2
  BlockQ8_0 b{};
  quantize_row_q8_0(x.data(), &b, 32);
  EXPECT_EQ(b.d, f32_to_f16(1.0f));
  EXPECT_EQ(b.qs[0], 127);
  EXPECT_EQ(b.qs[1], 3);
  EXPECT_EQ(b.qs[2], -3);
  EXPECT_EQ(b.qs[3], 0);
  EXPECT_EQ(b.qs[4], -127);
  EXPECT_EQ(b.qs[5], 0);
  EXPECT_EQ(b.qs[31], 2);
  // Raw bytes: f16 scale (little endian) then 32 int8 codes.
  uint8_t raw[34];
  std::memcpy(raw, &b, 34);
  EXPECT_EQ(raw[0], 0x00);
  EXPECT_EQ(raw[1], 0x3C);  // f16 1.0 = 0x3C00
  EXPECT_EQ(raw[2], 127);
  EXPECT_EQ(raw[4], uint8_t(-3));
  std::vector<float> y(32);
  dequantize_row_q8_0(&b, y.data(), 32);
  EXPECT_EQ(y[1], 3.0f);
  EXPECT_EQ(y[4], -127.0f);
}

TEST(GGUFQuant, Q4_0KnownBlockAndNibbleOrder) {
  // The largest magnitude is -8 -> d = m / -8 = 1; code = trunc(x + 8.5) clamped to 15.
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;   // 0
  x[1] = 7.9f;    // trunc(16.4) = 16 -> 15
  x[2] = 0.5f;    // 9 (halves go up)
  x[3] = -0.5f;   // 8
  x[4] = 1.49f;   // 9
  x[16] = 3.0f;   // 11, high nibble of byte 0
  x[17] = -3.2f;  // trunc(5.3) = 5, high nibble of byte 1
  x[31] = -7.6f;  // trunc(0.9) = 0, high nibble of byte 15
  BlockQ4_0 b{};
  quantize_row_q4_0(x.data(), &b, 32);
  EXPECT_EQ(b.d, f32_to_f16(1.0f));
  EXPECT_EQ(b.qs[0], 0x00 | (11 << 4));
  EXPECT_EQ(b.qs[1], 15 | (5 << 4));
  EXPECT_EQ(b.qs[2], 9 | (8 << 4));
  EXPECT_EQ(b.qs[3], 8 | (8 << 4));
  EXPECT_EQ(b.qs[4], 9 | (8 << 4));
  EXPECT_EQ(b.qs[15], 8 | (0 << 4));
  std::vector<float> y(32);
  dequantize_row_q4_0(&b, y.data(), 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[16], 3.0f);
  EXPECT_EQ(y[17], -3.0f);
  EXPECT_EQ(y[31], -8.0f);

  // A positive extreme gives a negative scale: m = 4 -> d = -0.5; 4 -> code 0, -4 -> 16 -> 15.
  std::vector<float> z(32, 0.0f);
  z[5] = 4.0f;
  z[6] = -4.0f;
  z[7] = 1.0f;  // 1 / -0.5 + 8.5 = 6.5 -> 6
  quantize_row_q4_0(z.data(), &b, 32);
  EXPECT_EQ(b.d, f32_to_f16(-0.5f));
  EXPECT_EQ(b.qs[5] & 0x0F, 0);
  EXPECT_EQ(b.qs[6] & 0x0F, 15);
  EXPECT_EQ(b.qs[7] & 0x0F, 6);
  dequantize_row_q4_0(&b, y.data(), 32);
  EXPECT_EQ(y[5], 4.0f);
  EXPECT_EQ(y[6], -3.5f);
  EXPECT_EQ(y[7], 1.0f);
}

TEST(GGUFQuant, ZeroBlocksAndBadLengths) {
  std::vector<float> x(64, 0.0f);
  BlockQ8_0 a[2];
  BlockQ4_0 b[2];
  quantize_row_q8_0(x.data(), a, 64);
  quantize_row_q4_0(x.data(), b, 64);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(a[i].d, 0);
    EXPECT_EQ(b[i].d, 0x8000);  // as ggml: d = 0 / -8 = -0
    for (int j = 0; j < 32; ++j) EXPECT_EQ(a[i].qs[j], 0);
    for (int j = 0; j < 16; ++j) EXPECT_EQ(b[i].qs[j], 0x88);
  }
  EXPECT_THROW(quantize_row_q8_0(x.data(), a, 48), Error);
  EXPECT_THROW(quantize_row_q4_0(x.data(), b, 33), Error);
  EXPECT_THROW(ggml_row_bytes(GGMLType::Q4_0, 40), Error);
  EXPECT_EQ(ggml_row_bytes(GGMLType::Q8_0, 64), 68u);
  EXPECT_EQ(ggml_row_bytes(GGMLType::Q4_0, 64), 36u);
  // Our sizes agree with the reader's table of ggml types.
  EXPECT_EQ(ggml_row_bytes(GGMLType::Q8_0, 256), ggml_nbytes(GGMLType::Q8_0, {256}));
  EXPECT_EQ(ggml_row_bytes(GGMLType::Q4_0, 256), ggml_nbytes(GGMLType::Q4_0, {256}));
}

TEST(GGUFQuant, RoundTripErrorBounds) {
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  const int64_t n = 32 * 512;
  std::vector<float> x(n);
  for (auto& v : x) v = nd(gen);
  x[100] = 0.5f;  // an outlier: its block's error grows with it, the others' must not
  std::vector<BlockQ8_0> q8(n / 32);
  std::vector<BlockQ4_0> q4(n / 32);
  quantize_row_q8_0(x.data(), q8.data(), n);
  quantize_row_q4_0(x.data(), q4.data(), n);
  std::vector<float> y8(n), y4(n);
  dequantize_row_q8_0(q8.data(), y8.data(), n);
  dequantize_row_q4_0(q4.data(), y4.data(), n);
  double e8 = 0, e4 = 0, ss = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    for (int j = 0; j < 32; ++j) {
      const int64_t i = b * 32 + j;
      // Q8_0: half a step (amax / 254) plus the f16 scale's rounding over 127 steps.
      EXPECT_LE(std::fabs(x[i] - y8[i]), amax / 254 + amax * 0x1p-11f + 1e-9f) << i;
      // Q4_0: half a step (amax / 16), a whole step for the clamped opposite extreme, plus f16.
      EXPECT_LE(std::fabs(x[i] - y4[i]), amax / 8 + amax * 0x1p-10f + 1e-9f) << i;
      e8 += double(x[i] - y8[i]) * (x[i] - y8[i]);
      e4 += double(x[i] - y4[i]) * (x[i] - y4[i]);
      ss += double(x[i]) * x[i];
    }
  }
  const double r8 = std::sqrt(e8 / ss), r4 = std::sqrt(e4 / ss);
  std::printf("relative RMS error on N(0, 0.02) rows: q8_0 %.4f, q4_0 %.4f\n", r8, r4);
  EXPECT_LT(r8, 0.01);
  EXPECT_LT(r4, 0.15);
  EXPECT_GT(r4, r8);
}

TEST(GGUFQuant, TensorTypeRules) {
  EXPECT_EQ(gguf_tensor_type("blk.0.attn_norm.weight", false, 64, GGMLType::Q4_0), GGMLType::F32);
  EXPECT_EQ(gguf_tensor_type("blk.0.attn_q.weight", true, 64, GGMLType::Q4_0), GGMLType::Q4_0);
  EXPECT_EQ(gguf_tensor_type("token_embd.weight", true, 64, GGMLType::Q4_0), GGMLType::Q4_0);
  EXPECT_EQ(gguf_tensor_type("output.weight", true, 64, GGMLType::Q4_0), GGMLType::Q8_0);
  EXPECT_EQ(gguf_tensor_type("output.weight", true, 64, GGMLType::Q8_0), GGMLType::Q8_0);
  EXPECT_EQ(gguf_tensor_type("blk.0.ffn_down.weight", true, 688, GGMLType::Q8_0), GGMLType::F16);
  EXPECT_EQ(gguf_tensor_type("blk.0.ffn_down.weight", true, 688, GGMLType::F32), GGMLType::F32);
  EXPECT_EQ(parse_gguf_dtype("Q4_0"), GGMLType::Q4_0);
  EXPECT_EQ(parse_gguf_dtype("q8_0"), GGMLType::Q8_0);
  EXPECT_FALSE(parse_gguf_dtype("q4_k").has_value());
  EXPECT_EQ(gguf_file_type_for(GGMLType::Q8_0), 7u);
  EXPECT_EQ(gguf_file_type_for(GGMLType::Q4_0), 2u);
}

namespace {

// A small llama (GQA, untied head, Q/K permuted on export) with one FFN width that is not a
// multiple of 32 (ffn_down then stays F16) or one that is.
std::string synth_model(const std::string& name, int64_t ffn) {
  const std::string dir = aloepri::testing::scratch_dir(name) + "/hf";
  SynthOptions so;
  so.family = Family::Llama;
  so.hidden = 64;
  so.layers = 2;
  so.heads = 4;
  so.kv_heads = 2;
  so.ffn = ffn;
  so.tie = false;
  so.vocab_dir = aloepri::testing::vocab_dir("llama2");
  so.seed = 11;
  synthesize(so, dir);
  return dir;
}

// The same file with every tensor stored F32 (quantized ones dequantized): llama.cpp running it
// sees exactly the weights we meant the quantized file to hold.
void write_dequantized_copy(const std::string& in, const std::string& out) {
  GGUFReader r(in);
  GGUFWriter w(out);
  for (const auto& [k, v] : r.metadata()) {
    if (k == "general.quantization_version") continue;
    w.set(k, k == "general.file_type" ? Value::u32(kFileAllF32) : v);
  }
  for (const auto& t : r.tensors()) w.add_tensor(t.name, t.ne, GGMLType::F32);
  for (const auto& t : r.tensors()) {
    std::vector<float> v = read_dequantized(r, t.name);
    w.write_tensor(t.name, v.data(), v.size() * 4);
  }
  w.finish();
}

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double e = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    e += (a[i] - b[i]) * (a[i] - b[i]);
    s += b[i] * b[i];
  }
  return std::sqrt(e / s);
}

}  // namespace

TEST(GGUFQuant, ExportTypesAndBytesMatchQuantizingTheF32Export) {
  const std::string hf = synth_model("gguf_quant_export", 176);  // 176 = 5.5 blocks
  const std::string dir = fs::path(hf).parent_path().string();
  GGUFExportOptions go;
  go.progress = false;
  HFModel m(hf);
  export_gguf(m, dir + "/f32.gguf", GGMLType::F32, go);
  export_gguf(m, dir + "/q8.gguf", GGMLType::Q8_0, go);
  export_gguf(m, dir + "/q4.gguf", GGMLType::Q4_0, go);
  EXPECT_THROW(export_gguf(m, dir + "/bad.gguf", GGMLType::Q4_K, go), Error);
  GGUFReader f(dir + "/f32.gguf");
  for (auto [file, type] : {std::pair{"q8.gguf", GGMLType::Q8_0}, std::pair{"q4.gguf", GGMLType::Q4_0}}) {
    GGUFReader g(dir + "/" + file);
    EXPECT_EQ(g.get("general.file_type").as_u64(), gguf_file_type_for(type));
    EXPECT_EQ(g.get("general.quantization_version").as_u64(), 2u);
    ASSERT_EQ(g.tensors().size(), f.tensors().size());
    int n_quant = 0;
    for (const auto& t : g.tensors()) {
      const auto& ft = f.tensor(t.name);
      EXPECT_EQ(t.ne, ft.ne) << t.name;
      const bool two_d = t.ne.size() == 2;
      GGMLType want = !two_d ? GGMLType::F32
                      : t.ne[0] % 32 != 0 ? GGMLType::F16
                      : (t.name == "output.weight" && type == GGMLType::Q4_0) ? GGMLType::Q8_0
                                                                              : type;
      EXPECT_EQ(t.type, want) << file << " " << t.name;
      // The file's bytes are exactly our quantizer applied to the f32 export's values (so the
      // Q/K permutation and the row order survive the quantized path).
      std::vector<float> v = f.read_f32(t.name);
      std::vector<uint8_t> bytes(ggml_row_bytes(t.type, int64_t(v.size())));
      quantize_values(t.type, v.data(), bytes.data(), int64_t(v.size()));
      ASSERT_EQ(bytes.size(), t.nbytes) << t.name;
      EXPECT_EQ(std::memcmp(bytes.data(), t.data, bytes.size()), 0) << file << " " << t.name;
      n_quant += ggml_type_is_block_quant(t.type);
      // And dequantizing reads the values back near the f32 ones.
      std::vector<float> back = read_dequantized(g, t.name);
      double e = 0, s = 0;
      for (size_t i = 0; i < v.size(); ++i) {
        e += double(back[i] - v[i]) * (back[i] - v[i]);
        s += double(v[i]) * v[i];
      }
      if (s > 0) {
        EXPECT_LT(std::sqrt(e / s), type == GGMLType::Q8_0 ? 0.01 : 0.15) << t.name;
      }
    }
    // token_embd, output, 2 x (q, k, v, o, gate, up) quantized; ffn_down (176 wide) F16.
    EXPECT_EQ(n_quant, 2 + 2 * 6) << file;
  }
}

TEST(GGUFQuant, LlamaCppRunsQuantizedExports) {
  std::string why;
  if (!aloepri::testing::harness_installed(&why)) GTEST_SKIP() << "llama.cpp harness not installed: " << why;
  const std::string hf = synth_model("gguf_quant_llamacpp", 192);
  const std::string dir = fs::path(hf).parent_path().string();
  GGUFExportOptions go;
  go.progress = false;
  HFModel m(hf);
  export_gguf(m, dir + "/f32.gguf", GGMLType::F32, go);
  const std::vector<int64_t> ids = {1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 13};
  auto ref = aloepri::testing::run_harness_eval(dir + "/f32.gguf", ids, 0, true);
  for (auto type : {GGMLType::Q8_0, GGMLType::Q4_0}) {
    const std::string q = dir + "/" + ggml_type_name(type) + ".gguf", deq = q + ".dequantized.gguf";
    export_gguf(m, q, type, go);
    write_dequantized_copy(q, deq);
    auto out = aloepri::testing::run_harness_eval(q, ids, 0, true);
    auto outd = aloepri::testing::run_harness_eval(deq, ids, 0, true);
    ASSERT_EQ(out.logits.size(), ids.size());
    ASSERT_EQ(outd.logits.size(), ids.size());
    double vs_f32 = 0, vs_deq = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      ASSERT_EQ(out.logits[t].size(), ref.logits[t].size());
      for (double v : out.logits[t]) ASSERT_TRUE(std::isfinite(v)) << ggml_type_name(type) << " position " << t;
      vs_f32 = std::max(vs_f32, rel_l2(out.logits[t], ref.logits[t]));
      vs_deq = std::max(vs_deq, rel_l2(out.logits[t], outd.logits[t]));
    }
    std::printf("%s on llama.cpp: worst relative L2 logit error vs the f32 export %.4f, vs the same weights "
                "dequantized to f32 %.4f\n", ggml_type_name(type).c_str(), vs_f32, vs_deq);
    // llama.cpp reads our blocks as the weights we meant: what is left against the dequantized
    // weights is its own activation rounding (it multiplies Q8_0/Q4_0 weights by Q8_0-rounded
    // activations; measured ~0.02-0.03 on this model for both types). For Q4_0 that is far
    // below the weight quantization's effect (a wrong scale sign or nibble order would make the
    // model unrelated to the f32 one).
    EXPECT_GT(vs_f32, 0.0) << "identical logits: was the file quantized at all?";
    EXPECT_LT(vs_deq, 0.08) << ggml_type_name(type);
    if (type == GGMLType::Q4_0) {
      EXPECT_LT(vs_deq, 0.25 * vs_f32);
    }
    EXPECT_LT(vs_f32, type == GGMLType::Q8_0 ? 0.1 : 0.8) << ggml_type_name(type);
  }
}

TEST(GGUFQuant, CliConvertAndObfuscateAcceptQuantizedDtypes) {
  using aloepri::testing::aloepri_exe;
  using aloepri::testing::run_command;
  using aloepri::testing::shell_quote;
  const std::string hf = synth_model("gguf_quant_cli", 128);
  const std::string dir = fs::path(hf).parent_path().string(), exe = shell_quote(aloepri_exe());
  std::string log;
  ASSERT_EQ(run_command(exe + " convert " + shell_quote(hf) + " --gguf " + shell_quote(dir + "/c.gguf") +
                            " --dtype q4_0", &log, true), 0) << log;
  EXPECT_EQ(GGUFReader(dir + "/c.gguf").get("general.file_type").as_u64(), uint64_t(kFileMostlyQ4_0));
  EXPECT_EQ(run_command(exe + " convert " + shell_quote(hf) + " --gguf " + shell_quote(dir + "/d.gguf") +
                            " --dtype q5_0", &log, true), int(kExitUsage));
  ASSERT_EQ(run_command(exe + " keygen --out " + shell_quote(dir + "/k.key"), &log, true), 0) << log;
  const std::string obf = exe + " obfuscate " + shell_quote(hf) + " --key " + shell_quote(dir + "/k.key") + " --exact";
  // A GGUF-only type without --gguf is a usage error.
  EXPECT_EQ(run_command(obf + " --out " + shell_quote(dir + "/o1") + " --dtype q8_0", &log, true),
            int(kExitUsage)) << log;
  ASSERT_EQ(run_command(obf + " --out " + shell_quote(dir + "/o2") + " --gguf " + shell_quote(dir + "/o2.gguf") +
                            " --dtype q8_0", &log, true), 0) << log;
  GGUFReader g(dir + "/o2.gguf");
  EXPECT_EQ(g.get("general.file_type").as_u64(), uint64_t(kFileMostlyQ8_0));
  EXPECT_EQ(g.tensor("blk.0.ffn_up.weight").type, GGMLType::Q8_0);
  EXPECT_EQ(g.tensor("token_embd.weight").type, GGMLType::Q8_0);
  EXPECT_EQ(g.tensor("output_norm.weight").type, GGMLType::F32);
  // The checkpoint keeps the input's dtype (synth writes f32).
  EXPECT_EQ(HFModel(dir + "/o2").weights().get(tensor_names::embed()).dtype, DType::F32);
}
