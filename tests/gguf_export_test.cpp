// HF -> GGUF export: metadata, tensor names / dims / types, the llama Q/K permutation (checked
// both against the index formula and semantically: attention scores are unchanged), llama3 rope
// factors, tokenizer metadata for the three real vocabularies, and error cases.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"
#include "support/paths.h"

using namespace aloepri;
using namespace aloepri::gguf;
namespace at = aloepri::testing;
namespace fs = std::filesystem;

namespace {

ModelConfig config(Family f, int64_t d, int64_t heads, int64_t kv, int64_t hd, int64_t vocab, int64_t layers = 2) {
  ModelConfig c;
  c.family = f;
  c.hidden_size = d;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = hd;
  c.intermediate_size = 2 * d + 8;
  c.vocab_size = vocab;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = f == Family::Llama || f == Family::Mistral ? 10000.0 : 1000000.0;
  c.attention_bias = f == Family::Qwen2;
  c.qk_norm = f == Family::Qwen3;
  c.tie_word_embeddings = f == Family::Qwen2 || f == Family::Qwen3;
  return c;
}

// A random checkpoint of config c with the tokenizer files of a real vocabulary.
std::string make_model(const std::string& name, const ModelConfig& c, const std::string& vocab) {
  std::string dir = at::scratch_dir(name) + "/model";
  write_synthetic_model(dir, c, 11, DType::F32);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(at::vocab_dir(vocab) + "/" + f, dir + "/" + f);
  return dir;
}

GGUFExportOptions quiet() {
  GGUFExportOptions o;
  o.progress = false;
  return o;
}

std::vector<float> hf(const HFModel& m, const std::string& name) { return m.tensor_f32(name).data; }

// Rotary embedding of one head at position p. HF rotate_half pairs (i, i + hd/2); llama.cpp's
// normal mode pairs (2i, 2i + 1); both rotate pair i by p * theta^(-2i/hd).
void rope_half(double* x, int64_t hd, int64_t p, double theta) {
  for (int64_t i = 0; i < hd / 2; ++i) {
    double a = p * std::pow(theta, -2.0 * i / hd), c = std::cos(a), s = std::sin(a);
    double x0 = x[i], x1 = x[i + hd / 2];
    x[i] = x0 * c - x1 * s;
    x[i + hd / 2] = x1 * c + x0 * s;
  }
}
void rope_interleaved(double* x, int64_t hd, int64_t p, double theta) {
  for (int64_t i = 0; i < hd / 2; ++i) {
    double a = p * std::pow(theta, -2.0 * i / hd), c = std::cos(a), s = std::sin(a);
    double x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x1 * c + x0 * s;
  }
}

std::vector<double> matvec(const std::vector<float>& w, int64_t rows, int64_t cols, const std::vector<double>& x) {
  std::vector<double> y(size_t(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) y[size_t(r)] += double(w[size_t(r * cols + k)]) * x[size_t(k)];
  return y;
}

int count_type(const Value& types, int64_t t) {
  int n = 0;
  for (int64_t v : types.ints()) n += v == t;
  return n;
}

}  // namespace

TEST(GGUFExport, QkSourceRowFormula) {
  // The converter's permute: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): output (h, i, j)
  // comes from input (h, j, i).
  const int64_t hd = 8, heads = 3;
  std::set<int64_t> seen;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        int64_t out = h * hd + i * 2 + j, in = h * hd + j * (hd / 2) + i;
        EXPECT_EQ(llama_qk_source_row(out, hd), in) << "row " << out;
        seen.insert(llama_qk_source_row(out, hd));
      }
  EXPECT_EQ(seen.size(), size_t(heads * hd)) << "a permutation";
}

TEST(GGUFExport, LlamaF32MetadataTensorsAndPermutation) {
  // Obfuscated-model shape: hidden (40) != heads * head_dim (4 * 8), GQA 4/2, untied.
  ModelConfig c = config(Family::Llama, 40, 4, 2, 8, 32000);
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  std::string dir = make_model("gguf_export_llama", c, "llama2");
  HFModel m(dir);
  std::string out = fs::path(dir).parent_path().string() + "/llama.gguf";
  GGUFExportOptions o = quiet();
  o.name = "tiny-llama";
  GGUFExportResult res = export_gguf(m, out, DType::F32, o);
  EXPECT_EQ(res.arch, "llama");

  GGUFReader r(out);
  EXPECT_EQ(r.get("general.architecture").as_string(), "llama");
  EXPECT_EQ(r.get("general.name").as_string(), "tiny-llama");
  EXPECT_EQ(r.get("general.file_type").as_u64(), 0u);
  EXPECT_EQ(r.get("general.alignment").as_u64(), 32u);
  struct U { const char* key; int64_t want; } u32s[] = {
      {"llama.vocab_size", 32000},        {"llama.context_length", 2048},
      {"llama.embedding_length", 40},     {"llama.block_count", 2},
      {"llama.feed_forward_length", 88},  {"llama.attention.head_count", 4},
      {"llama.attention.head_count_kv", 2}, {"llama.attention.key_length", 8},
      {"llama.attention.value_length", 8}, {"llama.rope.dimension_count", 8},
  };
  for (auto& k : u32s) {
    EXPECT_EQ(r.get(k.key).type(), ValueType::UINT32) << k.key;
    EXPECT_EQ(r.get(k.key).as_i64(), k.want) << k.key;
  }
  EXPECT_EQ(r.get("llama.attention.layer_norm_rms_epsilon").type(), ValueType::FLOAT32);
  EXPECT_EQ(r.get("llama.attention.layer_norm_rms_epsilon").as_f64(), double(float(1e-5)));
  EXPECT_EQ(r.get("llama.rope.freq_base").as_f64(), 10000.0);
  EXPECT_FALSE(r.has("llama.rope.scaling.type"));
  EXPECT_FALSE(r.has_tensor("rope_freqs.weight"));

  // Tensor names, dims (fastest first = HF columns first) and types.
  std::set<std::string> names;
  for (const auto& t : r.tensors()) names.insert(t.name);
  std::set<std::string> want = {"token_embd.weight", "output_norm.weight", "output.weight"};
  for (int i = 0; i < 2; ++i)
    for (const char* s : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                          "ffn_up", "ffn_down"})
      want.insert("blk." + std::to_string(i) + "." + s + ".weight");
  EXPECT_EQ(names, want);
  EXPECT_EQ(r.tensor("token_embd.weight").ne, (std::vector<int64_t>{40, 32000}));
  EXPECT_EQ(r.tensor("output.weight").ne, (std::vector<int64_t>{40, 32000}));
  EXPECT_EQ(r.tensor("blk.0.attn_q.weight").ne, (std::vector<int64_t>{40, 32}));
  EXPECT_EQ(r.tensor("blk.0.attn_k.weight").ne, (std::vector<int64_t>{40, 16}));
  EXPECT_EQ(r.tensor("blk.0.attn_output.weight").ne, (std::vector<int64_t>{32, 40}));
  EXPECT_EQ(r.tensor("blk.1.ffn_down.weight").ne, (std::vector<int64_t>{88, 40}));
  EXPECT_EQ(r.tensor("blk.1.ffn_gate.weight").ne, (std::vector<int64_t>{40, 88}));
  EXPECT_EQ(r.tensor("blk.1.attn_norm.weight").ne, (std::vector<int64_t>{40}));
  for (const auto& t : r.tensors()) EXPECT_EQ(t.type, GGMLType::F32) << t.name;

  // Unpermuted tensors are bit-identical to the checkpoint.
  EXPECT_EQ(r.read_f32("token_embd.weight"), hf(m, tensor_names::embed()));
  EXPECT_EQ(r.read_f32("output.weight"), hf(m, tensor_names::lm_head()));
  EXPECT_EQ(r.read_f32("output_norm.weight"), hf(m, tensor_names::final_norm()));
  EXPECT_EQ(r.read_f32("blk.1.attn_v.weight"), hf(m, tensor_names::layer(1, "self_attn.v_proj.weight")));
  EXPECT_EQ(r.read_f32("blk.1.attn_output.weight"), hf(m, tensor_names::layer(1, "self_attn.o_proj.weight")));
  EXPECT_EQ(r.read_f32("blk.0.ffn_down.weight"), hf(m, tensor_names::layer(0, "mlp.down_proj.weight")));

  // Q and K: un-permute the GGUF rows and compare with HF.
  const int64_t d = 40, hd = 8;
  for (auto [g, h, rows] : {std::tuple{"blk.1.attn_q.weight", "self_attn.q_proj.weight", 32},
                            std::tuple{"blk.1.attn_k.weight", "self_attn.k_proj.weight", 16}}) {
    auto gw = r.read_f32(g), hw = hf(m, tensor_names::layer(1, h));
    for (int64_t row = 0; row < rows; ++row) {
      int64_t head = row / hd, k = row % hd;
      int64_t src = head * hd + (k % 2) * (hd / 2) + k / 2;
      for (int64_t col = 0; col < d; ++col)
        ASSERT_EQ(gw[size_t(row * d + col)], hw[size_t(src * d + col)]) << g << " row " << row;
    }
    EXPECT_NE(gw, hw) << "rows really moved";
  }

  // Semantics: per head, q.k after HF rope on HF weights == after llama.cpp rope on GGUF weights.
  std::vector<double> x(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) x[size_t(i)] = std::sin(0.7 * double(i) + 0.3);
  auto q_hf = matvec(hf(m, tensor_names::layer(0, "self_attn.q_proj.weight")), 32, d, x);
  auto k_hf = matvec(hf(m, tensor_names::layer(0, "self_attn.k_proj.weight")), 16, d, x);
  auto q_gg = matvec(r.read_f32("blk.0.attn_q.weight"), 32, d, x);
  auto k_gg = matvec(r.read_f32("blk.0.attn_k.weight"), 16, d, x);
  for (int64_t h = 0; h < 4; ++h) {
    rope_half(&q_hf[size_t(h * hd)], hd, 5, 10000.0);
    rope_interleaved(&q_gg[size_t(h * hd)], hd, 5, 10000.0);
  }
  for (int64_t h = 0; h < 2; ++h) {
    rope_half(&k_hf[size_t(h * hd)], hd, 2, 10000.0);
    rope_interleaved(&k_gg[size_t(h * hd)], hd, 2, 10000.0);
  }
  for (int64_t h = 0; h < 4; ++h) {
    int64_t kvh = h / 2;  // GQA group
    double s_hf = 0, s_gg = 0;
    for (int64_t i = 0; i < hd; ++i) {
      s_hf += q_hf[size_t(h * hd + i)] * k_hf[size_t(kvh * hd + i)];
      s_gg += q_gg[size_t(h * hd + i)] * k_gg[size_t(kvh * hd + i)];
    }
    EXPECT_NEAR(s_hf, s_gg, 1e-9 * (1 + std::abs(s_hf))) << "head " << h;
  }

  // Llama-2 vocabulary: SentencePiece-style "llama" tokenizer with scores and byte tokens.
  EXPECT_EQ(r.get("tokenizer.ggml.model").as_string(), "llama");
  EXPECT_EQ(r.get("tokenizer.ggml.pre").as_string(), "default");
  const auto& tokens = r.get("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 32000u);
  EXPECT_EQ(r.get("tokenizer.ggml.scores").size(), 32000u);
  EXPECT_EQ(r.get("tokenizer.ggml.scores").elem_type(), ValueType::FLOAT32);
  const auto& types = r.get("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 32000u);
  EXPECT_EQ(types.elem_type(), ValueType::INT32);
  EXPECT_EQ(count_type(types, kTokByte), 256);
  EXPECT_EQ(tokens.strings()[3 + 0x41], "<0x41>");
  EXPECT_EQ(types.ints()[3 + 0x41], kTokByte);
  EXPECT_EQ(tokens.strings()[0], "<unk>");
  EXPECT_EQ(types.ints()[0], kTokUnknown);
  EXPECT_EQ(types.ints()[1], kTokControl);
  EXPECT_EQ(types.ints()[2], kTokControl);
  EXPECT_EQ(count_type(types, kTokNormal), 32000 - 256 - 3);
  EXPECT_FALSE(r.has("tokenizer.ggml.merges"));
  EXPECT_EQ(r.get("tokenizer.ggml.bos_token_id").as_u64(), 1u);
  EXPECT_EQ(r.get("tokenizer.ggml.eos_token_id").as_u64(), 2u);
  EXPECT_EQ(r.get("tokenizer.ggml.unknown_token_id").as_u64(), 0u);
  EXPECT_TRUE(r.get("tokenizer.ggml.add_bos_token").as_bool());
  EXPECT_FALSE(r.get("tokenizer.ggml.add_eos_token").as_bool());
  // Scores order merge products by merge rank: "▁t" (first merge) outranks "er"-like later ones,
  // and every normal token scores below zero except the first merge's product.
  TokenizerJson tok = TokenizerJson::load(dir);
  const auto& sc = r.get("tokenizer.ggml.scores").floats();
  int64_t first = *tok.find(tok.merges[0].first + tok.merges[0].second);
  int64_t later = *tok.find(tok.merges[1000].first + tok.merges[1000].second);
  EXPECT_EQ(sc[size_t(first)], 0.0);
  EXPECT_GT(sc[size_t(first)], sc[size_t(later)]);
  int64_t rank = 0;  // the first merge producing `later` (several merges can make one token)
  while (tok.merges[size_t(rank)].first + tok.merges[size_t(rank)].second != tok.id_to_token[size_t(later)]) ++rank;
  EXPECT_EQ(sc[size_t(later)], -double(rank));
  EXPECT_GT(rank, 0);
}

TEST(GGUFExport, HalfPrecisionTypesAndFileType) {
  ModelConfig c = config(Family::Mistral, 32, 4, 4, 8, 32000, 1);
  std::string dir = make_model("gguf_export_half", c, "llama2");
  HFModel m(dir);
  for (DType dt : {DType::F16, DType::BF16}) {
    std::string out = fs::path(dir).parent_path().string() + "/m-" + dtype_name(dt) + ".gguf";
    export_gguf(m, out, dt, quiet());
    GGUFReader r(out);
    GGMLType want = dt == DType::F16 ? GGMLType::F16 : GGMLType::BF16;
    EXPECT_EQ(r.get("general.file_type").as_u64(), dt == DType::F16 ? 1u : 32u);
    EXPECT_EQ(r.get("general.architecture").as_string(), "llama") << "mistral goes out as llama";
    for (const auto& t : r.tensors()) {
      bool vec = t.ne.size() == 1;
      EXPECT_EQ(t.type, vec ? GGMLType::F32 : want) << t.name;
    }
    // Values are the checkpoint's rounded once (RNE).
    auto src = hf(m, tensor_names::layer(0, "mlp.up_proj.weight"));
    const auto& t = r.tensor("blk.0.ffn_up.weight");
    const uint16_t* p = reinterpret_cast<const uint16_t*>(t.data);
    for (size_t i = 0; i < src.size(); ++i)
      ASSERT_EQ(p[i], dt == DType::F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i])) << i;
    EXPECT_EQ(r.read_f32("blk.0.attn_norm.weight"), hf(m, tensor_names::layer(0, "input_layernorm.weight")));
  }
}

TEST(GGUFExport, Qwen2TiedWithBiasesAndPaddedQwenVocabulary) {
  // Qwen pads its embedding past the tokenizer (151,669 ids) to 151,936 rows.
  ModelConfig c = config(Family::Qwen2, 16, 2, 1, 8, 151936, 1);
  std::string dir = make_model("gguf_export_qwen2", c, "qwen3");
  HFModel m(dir);
  std::string out = fs::path(dir).parent_path().string() + "/qwen2.gguf";
  GGUFExportResult res = export_gguf(m, out, DType::F32, quiet());
  EXPECT_EQ(res.arch, "qwen2");
  GGUFReader r(out);
  EXPECT_EQ(r.get("general.architecture").as_string(), "qwen2");
  EXPECT_EQ(r.get("qwen2.attention.key_length").as_u64(), 8u);
  // NEOX rope: no permutation; biases F32 and unchanged; the tied head is written as output.weight.
  EXPECT_EQ(r.read_f32("blk.0.attn_q.weight"), hf(m, tensor_names::layer(0, "self_attn.q_proj.weight")));
  EXPECT_EQ(r.read_f32("blk.0.attn_k.bias"), hf(m, tensor_names::layer(0, "self_attn.k_proj.bias")));
  EXPECT_EQ(r.tensor("blk.0.attn_q.bias").type, GGMLType::F32);
  EXPECT_EQ(r.tensor("blk.0.attn_v.bias").ne, (std::vector<int64_t>{8}));
  EXPECT_EQ(r.read_f32("output.weight"), hf(m, tensor_names::embed()));

  EXPECT_EQ(r.get("tokenizer.ggml.model").as_string(), "gpt2");
  EXPECT_EQ(r.get("tokenizer.ggml.pre").as_string(), "qwen2");
  const auto& tokens = r.get("tokenizer.ggml.tokens").strings();
  const auto& types = r.get("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 151936u);
  EXPECT_EQ(res.n_tokenizer_tokens, 151669);
  EXPECT_EQ(tokens[151668], "</think>");
  EXPECT_EQ(tokens[151669], "[PAD151669]");
  EXPECT_EQ(tokens[151935], "[PAD151935]");
  EXPECT_EQ(count_type(types, kTokUnused), 151936 - 151669);
  EXPECT_EQ(types.ints()[151644], kTokControl);      // <|im_start|>
  EXPECT_EQ(types.ints()[151668], kTokUserDefined);  // </think>: added, not special
  EXPECT_EQ(types.ints()[100], kTokNormal);
  EXPECT_EQ(r.get("tokenizer.ggml.merges").size(), 151387u);
  EXPECT_EQ(r.get("tokenizer.ggml.merges").strings()[0], "\xc4\xa0 \xc4\xa0");
  EXPECT_EQ(r.get("tokenizer.ggml.eos_token_id").as_u64(), 151645u);      // <|im_end|>
  EXPECT_EQ(r.get("tokenizer.ggml.padding_token_id").as_u64(), 151643u);  // <|endoftext|>
  EXPECT_FALSE(r.get("tokenizer.ggml.add_bos_token").as_bool());
  EXPECT_FALSE(r.has("tokenizer.ggml.scores"));
  EXPECT_NE(r.get("tokenizer.chat_template").as_string().find("<|im_start|>"), std::string::npos);
}

TEST(GGUFExport, Qwen2WithNarrowAttentionGoesOutAsLlama) {
  // hidden 24 != 2 heads * 8: llama.cpp's qwen2 graph cannot hold it, the llama graph can.
  ModelConfig c = config(Family::Qwen2, 24, 2, 1, 8, 32000, 1);
  std::string dir = make_model("gguf_export_qwen2_llama", c, "llama2");
  HFModel m(dir);
  std::string out = fs::path(dir).parent_path().string() + "/q.gguf";
  EXPECT_EQ(export_gguf(m, out, DType::F32, quiet()).arch, "llama");
  GGUFReader r(out);
  EXPECT_EQ(r.get("llama.embedding_length").as_u64(), 24u);
  EXPECT_EQ(r.get("llama.attention.key_length").as_u64(), 8u);
  for (auto [g, h, n] : {std::tuple{"blk.0.attn_q.bias", "self_attn.q_proj.bias", 16},
                         std::tuple{"blk.0.attn_k.bias", "self_attn.k_proj.bias", 8}}) {
    auto gb = r.read_f32(g), hb = hf(m, tensor_names::layer(0, h));
    ASSERT_EQ(gb.size(), size_t(n));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(gb[size_t(i)], hb[size_t(llama_qk_source_row(i, 8))]) << g << i;
  }
  EXPECT_EQ(r.read_f32("blk.0.attn_v.bias"), hf(m, tensor_names::layer(0, "self_attn.v_proj.bias")));
  // Forcing an impossible arch is a usage error.
  GGUFExportOptions o = quiet();
  o.arch = "qwen2";
  o.overwrite = true;
  EXPECT_THROW(export_gguf(m, out, DType::F32, o), Error);
}

TEST(GGUFExport, Qwen3NormsAndLlama3VocabularyWithRopeFactors) {
  ModelConfig q3 = config(Family::Qwen3, 16, 4, 2, 8, 151669, 1);
  std::string d3 = make_model("gguf_export_qwen3", q3, "qwen3");
  HFModel m3(d3);
  std::string o3 = fs::path(d3).parent_path().string() + "/q3.gguf";
  EXPECT_EQ(export_gguf(m3, o3, DType::F32, quiet()).arch, "qwen3");
  GGUFReader r3(o3);
  EXPECT_EQ(r3.read_f32("blk.0.attn_q_norm.weight"), hf(m3, tensor_names::layer(0, "self_attn.q_norm.weight")));
  EXPECT_EQ(r3.tensor("blk.0.attn_k_norm.weight").ne, (std::vector<int64_t>{8}));
  EXPECT_EQ(r3.tensor("blk.0.attn_q.weight").ne, (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(r3.read_f32("blk.0.attn_q.weight"), hf(m3, tensor_names::layer(0, "self_attn.q_proj.weight")));
  EXPECT_EQ(r3.get("tokenizer.ggml.tokens").size(), 151669u);

  ModelConfig c = config(Family::Llama, 32, 4, 1, 8, 128256, 1);
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  std::string dir = make_model("gguf_export_llama3", c, "llama3");
  HFModel m(dir);
  std::string out = fs::path(dir).parent_path().string() + "/l3.gguf";
  export_gguf(m, out, DType::BF16, quiet());
  GGUFReader r(out);
  // rope_freqs.weight: head_dim/2 factors; wavelengths 2*pi/theta^(-i/8) = 6.3, 167, 4443, 118k
  // against bands 2048 (high) and 8192 (low): 1, 1, smooth, factor.
  ASSERT_TRUE(r.has_tensor("rope_freqs.weight"));
  EXPECT_EQ(r.tensor("rope_freqs.weight").type, GGMLType::F32);
  auto f = r.read_f32("rope_freqs.weight");
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], 1.0f);
  double wl = 2 * M_PI * std::pow(500000.0, 4.0 / 8.0);
  double smooth = (8192.0 / wl - 1.0) / 3.0;
  EXPECT_NEAR(f[2], 1.0 / ((1 - smooth) / 8.0 + smooth), 1e-4);
  EXPECT_EQ(f[3], 8.0f);
  EXPECT_EQ(r.get("tokenizer.ggml.model").as_string(), "gpt2");
  EXPECT_EQ(r.get("tokenizer.ggml.pre").as_string(), "llama-bpe");
  EXPECT_EQ(r.get("tokenizer.ggml.tokens").size(), 128256u);
  EXPECT_EQ(r.get("tokenizer.ggml.merges").size(), 280147u);
  EXPECT_EQ(r.get("tokenizer.ggml.bos_token_id").as_u64(), 128000u);
  EXPECT_EQ(r.get("tokenizer.ggml.eos_token_id").as_u64(), 128001u);
  EXPECT_TRUE(r.get("tokenizer.ggml.add_bos_token").as_bool());
  EXPECT_EQ(count_type(r.get("tokenizer.ggml.token_type"), kTokControl), 256);
}

TEST(GGUFExport, Errors) {
  ModelConfig c = config(Family::Llama, 16, 2, 2, 8, 1000, 1);
  std::string dir = make_model("gguf_export_errors", c, "llama2");
  HFModel m(dir);
  std::string base = fs::path(dir).parent_path().string();
  // The tokenizer has more ids than the model has embedding rows.
  try {
    export_gguf(m, base + "/small.gguf", DType::F16, quiet());
    ADD_FAILURE() << "accepted a tokenizer larger than the model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size is 1000"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(base + "/small.gguf"));
  // No tokenizer at all.
  GGUFExportOptions o = quiet();
  o.tokenizer_dir = base;
  EXPECT_THROW(export_gguf(m, base + "/x.gguf", DType::F16, o), Error);
  // Unsupported dtype.
  EXPECT_THROW(export_gguf(m, base + "/x.gguf", DType::F64, quiet()), Error);
  // A byte-fallback tokenizer without one of its byte tokens.
  std::string tdir = base + "/tok";
  fs::create_directories(tdir);
  nlohmann::json j = nlohmann::json::parse(read_file(at::vocab_dir("llama2") + "/tokenizer.json"));
  j["model"]["vocab"].erase("<0x41>");
  write_file_atomic(tdir + "/tokenizer.json", j.dump());
  ModelConfig c2 = config(Family::Llama, 16, 2, 2, 8, 32000, 1);
  std::string dir2 = make_model("gguf_export_errors_bytes", c2, "llama2");
  HFModel m2(dir2);
  o.tokenizer_dir = tdir;
  try {
    export_gguf(m2, base + "/nobyte.gguf", DType::F16, o);
    ADD_FAILURE() << "accepted a tokenizer without <0x41>";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("<0x41>"), std::string::npos) << e.what();
  }
  // Existing output: refused, then replaced with overwrite.
  std::string out = base + "/exists.gguf";
  write_file_atomic(out, "old");
  try {
    export_gguf(m2, out, DType::F16, quiet());
    ADD_FAILURE() << "overwrote an existing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
  }
  EXPECT_EQ(read_file(out), "old");
  GGUFExportOptions ow = quiet();
  ow.overwrite = true;
  export_gguf(m2, out, DType::F16, ow);
  EXPECT_EQ(GGUFReader(out).get("general.architecture").as_string(), "llama");
}

TEST(GGUFExport, ConvertCommand) {
  ModelConfig c = config(Family::Llama, 16, 2, 2, 8, 32000, 1);
  std::string dir = make_model("gguf_export_cli", c, "llama2");
  std::string out = fs::path(dir).parent_path().string() + "/cli.gguf";
  std::string cmd = at::aloepri_exe() + " -q convert " + dir + " --gguf " + out;
  std::string log;
  ASSERT_EQ(at::run_command(cmd + " --dtype bf16", &log, true), 0) << log;
  GGUFReader r(out);
  EXPECT_EQ(r.get("general.file_type").as_u64(), 32u);
  EXPECT_EQ(r.get("general.name").as_string(), "model");
  log.clear();
  EXPECT_EQ(at::run_command(cmd, &log, true), kExitOutputExists) << log;
  EXPECT_NE(log.find("--force"), std::string::npos) << log;
  EXPECT_EQ(at::run_command(cmd + " --force --name cli-test", &log, true), 0) << log;
  EXPECT_EQ(GGUFReader(out).get("general.name").as_string(), "cli-test");
  EXPECT_EQ(GGUFReader(out).get("general.file_type").as_u64(), 1u) << "f16 is the default";
  EXPECT_EQ(at::run_command(cmd + " --force --dtype q4", &log, true), kExitUsage) << log;
  log.clear();
  EXPECT_EQ(at::run_command(at::aloepri_exe() + " convert --help", &log, true), 0);
  EXPECT_NE(log.find("--gguf"), std::string::npos) << log;
  EXPECT_EQ(at::run_command(at::aloepri_exe() + " -q convert " + dir + "/nonexistent --gguf " + out + ".2", &log, true),
            kExitBadInput);
}

TEST(GGUFExport, OpaqueVocabularyForObfuscatedModels) {
  // An obfuscated checkpoint's ids are permuted: its config.json carries the permuted bos/eos,
  // while the copied tokenizer files still describe the plaintext ids.
  ModelConfig c = config(Family::Qwen2, 24, 2, 1, 8, 1000, 1);
  c.bos_token_id = 5;
  c.eos_token_id = 777;
  std::string dir = at::scratch_dir("gguf_export_opaque") + "/model";
  write_synthetic_model(dir, c, 3, DType::F32);  // no tokenizer files at all
  HFModel m(dir);
  std::string out = fs::path(dir).parent_path().string() + "/o.gguf";
  EXPECT_THROW(export_gguf(m, out, DType::F32, quiet()), Error) << "a real vocabulary needs tokenizer.json";
  GGUFExportOptions o = quiet();
  o.opaque_vocab = true;
  GGUFExportResult res = export_gguf(m, out, DType::F32, o);
  EXPECT_EQ(res.arch, "llama");
  GGUFReader r(out);
  const auto& tokens = r.get("tokenizer.ggml.tokens").strings();
  ASSERT_EQ(tokens.size(), 1000u);
  EXPECT_EQ(tokens[0], "[T0]");
  EXPECT_EQ(tokens[999], "[T999]");
  EXPECT_EQ(r.get("tokenizer.ggml.model").as_string(), "gpt2");
  EXPECT_EQ(r.get("tokenizer.ggml.merges").size(), 0u);
  EXPECT_EQ(r.get("tokenizer.ggml.bos_token_id").as_u64(), 5u);
  EXPECT_EQ(r.get("tokenizer.ggml.eos_token_id").as_u64(), 777u);
  EXPECT_EQ(r.get("tokenizer.ggml.token_type").ints()[777], kTokControl);
  EXPECT_EQ(count_type(r.get("tokenizer.ggml.token_type"), kTokNormal), 998);
  EXPECT_FALSE(r.get("tokenizer.ggml.add_bos_token").as_bool());
  EXPECT_FALSE(r.has("tokenizer.chat_template"));
}

// ---- tokenizer.json loading and tokenizer metadata on small hand-written files ----

namespace {

const char* kQwenRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string write_tokenizer(const std::string& name, const nlohmann::json& tok, const nlohmann::json& cfg) {
  std::string dir = at::scratch_dir(name);
  write_file_atomic(dir + "/tokenizer.json", tok.dump());
  if (!cfg.is_null()) write_file_atomic(dir + "/tokenizer_config.json", cfg.dump());
  return dir;
}

nlohmann::json byte_level(const std::string& regex) {
  nlohmann::json split = {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}};
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {" b", 1}, {"a b", 2}}},
            {"merges", nlohmann::json::array({nlohmann::json::array({"a", " b"})})}}},
          {"added_tokens",
           {{{"id", 4}, {"content", "<|end|>"}, {"special", true}},
            {{"id", 5}, {"content", "<x>"}, {"special", false}}}},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, {{"type", "ByteLevel"}}}}}}};
}

GGUFReader metadata_of(const std::string& dir, const TokenizerJson& t, int64_t vocab, const std::string& pre = "") {
  ModelConfig c;
  c.vocab_size = vocab;
  std::string p = dir + "/meta.gguf";
  GGUFWriter w(p, true);
  add_tokenizer_metadata(w, t, c, pre);
  w.finish();
  return GGUFReader(p);
}

}  // namespace

TEST(TokenizerJson, PairMergesHolesAddedTokensAndSpecialIds) {
  std::string dir = write_tokenizer("tokjson_pairs", byte_level(kQwenRegex),
                                    {{"eos_token", {{"content", "<|end|>"}}}, {"pad_token", "<x>"}});
  TokenizerJson t = TokenizerJson::load(dir);
  EXPECT_EQ(t.size(), 6);
  EXPECT_EQ(t.id_to_token[3], "") << "a hole";
  ASSERT_EQ(t.merges.size(), 1u);
  EXPECT_EQ(t.merges[0].second, " b");
  EXPECT_EQ(t.eos_id, 4);
  EXPECT_EQ(t.pad_id, 5);
  EXPECT_FALSE(t.bos_id.has_value());
  EXPECT_FALSE(t.add_bos.has_value());
  EXPECT_EQ(detect_tokenizer_pre(t), "qwen2");

  GGUFReader r = metadata_of(dir, t, 8);
  const auto& tokens = r.get("tokenizer.ggml.tokens").strings();
  const auto& types = r.get("tokenizer.ggml.token_type").ints();
  EXPECT_EQ(tokens, (std::vector<std::string>{"a", " b", "a b", "[PAD3]", "<|end|>", "<x>", "[PAD6]", "[PAD7]"}));
  EXPECT_EQ(types, (std::vector<int64_t>{kTokNormal, kTokNormal, kTokNormal, kTokUnused, kTokControl,
                                         kTokControl /* the pad token */, kTokUnused, kTokUnused}));
  // A space inside a merge part is written as U+0120 so "left right" stays splittable.
  EXPECT_EQ(r.get("tokenizer.ggml.merges").strings(), (std::vector<std::string>{"a \xc4\xa0" "b"}));
  EXPECT_EQ(r.get("tokenizer.ggml.eos_token_id").as_u64(), 4u);
  EXPECT_EQ(r.get("tokenizer.ggml.padding_token_id").as_u64(), 5u);
  EXPECT_FALSE(r.has("tokenizer.ggml.bos_token_id"));
  EXPECT_FALSE(r.get("tokenizer.ggml.add_bos_token").as_bool()) << "qwen2 default";
  // The model must have at least the tokenizer's ids.
  EXPECT_THROW(metadata_of(dir, t, 5), Error);
}

TEST(TokenizerJson, TemplateProcessingImpliesAddBos) {
  nlohmann::json j = byte_level(kQwenRegex);
  j["added_tokens"].push_back({{"id", 6}, {"content", "<s>"}, {"special", true}});
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                     {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}};
  std::string dir = write_tokenizer("tokjson_template", j, {{"bos_token", "<s>"}});
  TokenizerJson t = TokenizerJson::load(dir);
  EXPECT_EQ(t.bos_id, 6);
  EXPECT_EQ(t.add_bos, true);
  EXPECT_EQ(t.add_eos, false);
  // An explicit add_bos_token wins over the template.
  dir = write_tokenizer("tokjson_template2", j, {{"bos_token", "<s>"}, {"add_bos_token", false}});
  EXPECT_EQ(TokenizerJson::load(dir).add_bos, false);
}

TEST(TokenizerJson, UnknownPreTokenizerNeedsAnExplicitName) {
  std::string dir = write_tokenizer("tokjson_unknown_pre", byte_level(R"(\w+|\s+)"), nullptr);
  TokenizerJson t = TokenizerJson::load(dir);
  try {
    detect_tokenizer_pre(t);
    ADD_FAILURE() << "guessed a pre-tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--tokenizer-pre"), std::string::npos) << e.what();
  }
  GGUFReader r = metadata_of(dir, t, 6, "gpt-2");
  EXPECT_EQ(r.get("tokenizer.ggml.pre").as_string(), "gpt-2");
}

TEST(TokenizerJson, MalformedFilesAreNamed) {
  std::string dir = at::scratch_dir("tokjson_bad");
  auto expect_bad = [&](const std::string& text, const std::string& needle) {
    write_file_atomic(dir + "/tokenizer.json", text, true);
    try {
      TokenizerJson::load(dir);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(e.where().find("tokenizer.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_bad("{not json", "invalid JSON");
  expect_bad(R"({"model": {"type": "Unigram", "vocab": []}})", "model.type");
  expect_bad(R"({"model": {"type": "BPE"}})", "model.vocab");
  expect_bad(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}}})", "is both");
  expect_bad(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 0, "content": "z"}]})",
             "is both");
  expect_bad(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["nospace"]}})", "merges[0]");
  expect_bad(R"({"model": {"type": "BPE", "vocab": {"a": -1}}})", "out of range");
  // A special token named in tokenizer_config.json that does not exist.
  write_file_atomic(dir + "/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})", true);
  write_file_atomic(dir + "/tokenizer_config.json", R"({"eos_token": "</s>"})", true);
  try {
    TokenizerJson::load(dir);
    ADD_FAILURE() << "accepted an unknown eos_token";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: eos_token"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TokenizerJson::load(dir + "/missing"), Error);
}

TEST(GGUFExport, Bf16ShardedCheckpoint) {
  // A bf16 checkpoint split over several shards: exercises the staged (non-f32) conversion path,
  // the byte-for-byte passthrough (bf16 -> bf16) and tensors coming from different files.
  ModelConfig c = config(Family::Llama, 32, 4, 2, 8, 32000, 2);
  std::string dir = at::scratch_dir("gguf_export_bf16") + "/model";
  write_synthetic_model(dir, c, 5, DType::BF16, /*max_shard_bytes=*/1 << 20);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(at::vocab_dir("llama2") + "/" + f, dir + "/" + f);
  HFModel m(dir);
  ASSERT_GT(m.weights().files().size(), 1u) << "the test needs a sharded checkpoint";
  std::string base = fs::path(dir).parent_path().string();
  export_gguf(m, base + "/f32.gguf", DType::F32, quiet());
  export_gguf(m, base + "/bf16.gguf", DType::BF16, quiet());
  export_gguf(m, base + "/f16.gguf", DType::F16, quiet());
  GGUFReader r32(base + "/f32.gguf"), rb(base + "/bf16.gguf"), rh(base + "/f16.gguf");
  const std::string q = tensor_names::layer(1, "self_attn.q_proj.weight");
  auto hq = hf(m, q);  // bf16 widened to f32: exact
  auto gq = r32.read_f32("blk.1.attn_q.weight");
  for (int64_t row = 0; row < 32; ++row)
    for (int64_t col = 0; col < 32; ++col)
      ASSERT_EQ(gq[size_t(row * 32 + col)], hq[size_t(llama_qk_source_row(row, 8) * 32 + col)]);
  // bf16 -> bf16 without permutation is a byte copy of the checkpoint.
  const TensorView& up = m.weights().get(tensor_names::layer(0, "mlp.up_proj.weight"));
  const auto& t = rb.tensor("blk.0.ffn_up.weight");
  ASSERT_EQ(t.nbytes, up.nbytes);
  EXPECT_EQ(std::memcmp(t.data, up.data, up.nbytes), 0);
  // bf16 -> f16 rounds each widened value once.
  auto src = hf(m, tensor_names::embed());
  const uint16_t* p = reinterpret_cast<const uint16_t*>(rh.tensor("token_embd.weight").data);
  for (size_t i = 0; i < src.size(); i += 97) ASSERT_EQ(p[i], f32_to_f16(src[i])) << i;
  EXPECT_EQ(r32.read_f32("output.weight"), hf(m, tensor_names::lm_head()));
}
