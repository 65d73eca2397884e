// HF -> GGUF export (see include/aloepri/gguf_export.h). Naming follows llama.cpp's
// convert_hf_to_gguf.py for the llama / qwen2 / qwen3 architectures.
#include "aloepri/export/gguf_export.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <unordered_set>

#include "aloepri/core/error.h"
#include "aloepri/formats/gguf_quant.h"
#include "aloepri/model/model.h"
#include "aloepri/model/layout.h"
#include "aloepri/core/progress.h"

namespace fs = std::filesystem;

namespace aloepri {

using gguf::GGMLType;
using gguf::GGUFWriter;
using gguf::Value;

namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

uint32_t u32_field(int64_t v, const std::string& field) {
  require(v >= 0 && v <= int64_t(UINT32_MAX), "config.json: " + field, "value " + std::to_string(v) + " out of range");
  return uint32_t(v);
}

// Drop already-converted input pages from this process (the mapping is read-only and private, so
// they are simply faulted in again from the page cache if touched later). Without this, reading a
// multi-GB checkpoint through mmap would leave all of it counted in our resident set.
void release_pages(const void* p, size_t n) {
  static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  uintptr_t b = uintptr_t(p) / page * page;
  uintptr_t e = (uintptr_t(p) + n + page - 1) / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

GGMLType ggml_type_of(DType t) {
  switch (t) {
    case DType::F32: return GGMLType::F32;
    case DType::F16: return GGMLType::F16;
    case DType::BF16: return GGMLType::BF16;
    default: throw Error("--dtype", "GGUF export supports f32, f16 and bf16, not " + dtype_name(t), kExitUsage);
  }
}

// One output tensor: a 2-D HF weight (rows x cols, possibly Q/K-permuted), a 1-D vector, or
// generated values.
struct Job {
  std::string name;                // GGUF name
  const TensorView* src = nullptr; // null for generated and stacked
  std::vector<const TensorView*> stack;  // stacked experts: one [rows, cols] HF matrix each
  std::vector<float> generated;
  int64_t rows = 1, cols = 0;      // HF layout (out x in); 1-D: rows = 1 (a permuted bias: cols = 1)
  bool two_d = false;
  int64_t permute_head_dim = 0;    // > 0: llama Q/K row permutation
  std::vector<int64_t> ne;         // generated tensors of more than one dimension: their ggml ne
  DType out = DType::F32;
  GGMLType gtype = GGMLType::F32;  // the GGUF type; Q8_0 / Q4_0: rows are staged as f32 (out)
  uint64_t out_bytes() const {
    return uint64_t(std::max<size_t>(1, stack.size())) * uint64_t(rows) * gguf::ggml_row_bytes(gtype, cols);
  }
};

void check_shape(const TensorView& v, std::vector<int64_t> want) {
  require(v.shape == want, v.file + ": tensor " + q(v.name),
          "has shape " + shape_to_string(v.shape) + ", expected " + shape_to_string(want));
  require(dtype_is_float(v.dtype), v.file + ": tensor " + q(v.name), "has non-float dtype " + dtype_name(v.dtype));
}

// Streams one HF matrix of a job in row chunks: read rows (permuted if asked), convert, write.
void write_rows(GGUFWriter& w, const Job& j, const TensorView& v, std::vector<float>& f32buf,
                std::vector<uint8_t>& outbuf, Progress* prog) {
  const size_t in_es = dtype_size(v.dtype), out_es = dtype_size(j.out);
  const size_t in_row = size_t(j.cols) * in_es;
  // ~4M elements per chunk; a permuted tensor is chunked by whole heads so every chunk's source
  // rows are the same contiguous range as its output rows.
  int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, j.cols));
  if (j.permute_head_dim > 0) chunk = std::max<int64_t>(1, chunk / j.permute_head_dim) * j.permute_head_dim;
  chunk = std::min(chunk, j.rows);
  const bool quant = gguf::ggml_type_is_block_quant(j.gtype);
  if (quant) {
    // Block quantization: stage whole rows as f32 (permuted if asked), then quantize the chunk
    // (every row is a whole number of blocks, so chunk-wise equals row-wise).
    f32buf.resize(size_t(chunk * j.cols));
    outbuf.resize(gguf::ggml_row_bytes(j.gtype, chunk * j.cols));
    for (int64_t r0 = 0; r0 < j.rows; r0 += chunk) {
      const int64_t r1 = std::min(j.rows, r0 + chunk);
      for (int64_t r = r0; r < r1; ++r) {
        int64_t s = j.permute_head_dim > 0 ? llama_qk_source_row(r, j.permute_head_dim) : r;
        convert_to_f32(v.dtype, v.data + size_t(s) * in_row, f32buf.data() + size_t(r - r0) * j.cols, size_t(j.cols));
      }
      const int64_t n = (r1 - r0) * j.cols;
      gguf::quantize_values(j.gtype, f32buf.data(), outbuf.data(), n);
      const size_t nb = gguf::ggml_row_bytes(j.gtype, n);
      w.write_data(outbuf.data(), nb);
      release_pages(v.data + size_t(r0) * in_row, size_t(r1 - r0) * in_row);
      if (prog) prog->advance(nb);
    }
    return;
  }
  const bool passthrough = v.dtype == j.out && j.permute_head_dim == 0;
  const bool direct = v.dtype == DType::F32 && reinterpret_cast<uintptr_t>(v.data) % alignof(float) == 0;
  if (!passthrough) outbuf.resize(size_t(chunk * j.cols) * out_es);
  if (!passthrough && !direct) f32buf.resize(size_t(chunk * j.cols));
  for (int64_t r0 = 0; r0 < j.rows; r0 += chunk) {
    const int64_t r1 = std::min(j.rows, r0 + chunk);
    const uint8_t* base = v.data + size_t(r0) * in_row;
    const size_t span = size_t(r1 - r0) * in_row;
    if (passthrough) {
      w.write_data(base, span);
    } else if (direct) {
      // Aligned f32 input: convert straight from the mapping, row by row (no staging copy).
      for (int64_t r = r0; r < r1; ++r) {
        int64_t s = j.permute_head_dim > 0 ? llama_qk_source_row(r, j.permute_head_dim) : r;
        convert_from_f32(j.out, reinterpret_cast<const float*>(v.data + size_t(s) * in_row),
                         outbuf.data() + size_t(r - r0) * size_t(j.cols) * out_es, size_t(j.cols));
      }
      w.write_data(outbuf.data(), size_t((r1 - r0) * j.cols) * out_es);
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t s = j.permute_head_dim > 0 ? llama_qk_source_row(r, j.permute_head_dim) : r;
        convert_to_f32(v.dtype, v.data + size_t(s) * in_row, f32buf.data() + size_t(r - r0) * j.cols, size_t(j.cols));
      }
      size_t n = size_t((r1 - r0) * j.cols);
      convert_from_f32(j.out, f32buf.data(), outbuf.data(), n);
      w.write_data(outbuf.data(), n * out_es);
    }
    release_pages(base, span);
    if (prog) prog->advance(uint64_t(r1 - r0) * uint64_t(j.cols) * out_es);
  }
}

// Writes one job: generated values, one HF matrix or vector, or a stack of expert matrices
// (ggml's 3-D [cols, rows, n] is n row-major [rows, cols] matrices one after the other).
void write_job(GGUFWriter& w, const Job& j, std::vector<float>& f32buf, std::vector<uint8_t>& outbuf,
               Progress* prog) {
  w.begin_tensor(j.name);
  if (!j.src && j.stack.empty()) {
    std::vector<uint8_t> b(j.generated.size() * dtype_size(j.out));
    convert_from_f32(j.out, j.generated.data(), b.data(), j.generated.size());
    w.write_data(b.data(), b.size());
  } else if (j.stack.empty()) {
    write_rows(w, j, *j.src, f32buf, outbuf, prog);
  } else {
    for (const TensorView* v : j.stack) write_rows(w, j, *v, f32buf, outbuf, prog);
  }
  w.end_tensor();
}

bool looks_special(const std::string& t) {
  // As llama.cpp's converter: some added tokens are control tokens without being flagged special.
  auto starts = [&](const std::string& p) { return t.rfind(p, 0) == 0; };
  auto ends = [&](const std::string& s) { return t.size() >= s.size() && t.compare(t.size() - s.size(), s.size(), s) == 0; };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || (starts("<|") && ends("|>")) ||
         (starts("<\xef\xbd\x9c") && ends("\xef\xbd\x9c>")) || (starts("<unused") && ends(">"));
}

bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit((unsigned char)t[3]) &&
         std::isxdigit((unsigned char)t[4]);
}

// What llama.cpp's deepseek2 graph can express of a DeepSeek config.
void check_deepseek2(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  require(rs.type.empty() || rs.type == "yarn", "config.json: rope_scaling",
          "type '" + rs.type + "' is not supported for DeepSeek (none or yarn)");
  if (rs.type == "yarn") {
    // llama.cpp's deepseek2 graph leaves cos/sin unscaled and multiplies the scores by
    // (1 + 0.1 mscale_all_dim ln factor)^2, i.e. it assumes mscale == mscale_all_dim > 0; it
    // reads no beta_fast / beta_slow (always 32 / 1).
    require(rs.mscale_all_dim > 0, "config.json: rope_scaling.mscale_all_dim",
            "is 0; llama.cpp's deepseek2 graph would then scale the scores by (1 + 0.1 ln factor)^2");
    require(rs.mscale == rs.mscale_all_dim, "config.json: rope_scaling.mscale",
            "differs from mscale_all_dim; llama.cpp's deepseek2 graph assumes they are equal");
    require(rs.beta_fast == 32.0 && rs.beta_slow == 1.0, "config.json: rope_scaling.beta_fast",
            "beta_fast / beta_slow other than 32 / 1 are not read by llama.cpp");
  }
  if (!c.is_moe()) return;
  // Its graph: layers < leading_dense_block_count dense, every later one sparse with shared experts.
  for (int64_t l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l)
    require(c.is_moe_layer(l), "config.json: moe_layer_freq",
            "layer " + std::to_string(l) + " is dense after the first sparse layer; llama.cpp's deepseek2 cannot express it");
  require(c.n_shared_experts > 0, "config.json: n_shared_experts",
          "is 0; llama.cpp's deepseek2 graph always adds the shared experts");
  require(c.topk_method != "group_limited_greedy" || c.n_group == 1, "config.json: topk_method",
          "group_limited_greedy scores a group by its best expert; llama.cpp's deepseek2 by the sum of its two best "
          "(noaux_tc), so the served model would route differently");
}

void add_deepseek2_metadata(GGUFWriter& w, const ModelConfig& c) {
  const std::string a = "deepseek2.";
  // The absorbed (MLA) form: one latent key/value head of kv_lora + rope / kv_lora, attn_k_b and
  // attn_v_b per head; the *_mla lengths are the decompressed head sizes.
  w.set(a + "attention.head_count_kv", Value::u32(1));
  w.set(a + "attention.key_length", Value::u32(u32_field(c.kv_lora_rank + c.qk_rope_head_dim, "kv_lora_rank")));
  w.set(a + "attention.value_length", Value::u32(u32_field(c.kv_lora_rank, "kv_lora_rank")));
  w.set(a + "attention.key_length_mla", Value::u32(u32_field(c.head_dim, "qk_nope_head_dim + qk_rope_head_dim")));
  w.set(a + "attention.value_length_mla", Value::u32(u32_field(c.v_head_dim, "v_head_dim")));
  // llama.cpp reads q_lora_rank unless its layer count says "lite"; 0 selects attn_q.
  w.set(a + "attention.q_lora_rank", Value::u32(u32_field(c.q_lora_rank, "q_lora_rank")));
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "yarn") {  // as llama.cpp's converter writes it (the loader divides the multiplier by 0.1)
    w.set(a + "rope.scaling.type", Value::string("yarn"));
    w.set(a + "rope.scaling.factor", Value::f32(float(rs.factor)));
    w.set(a + "rope.scaling.original_context_length",
          Value::u32(u32_field(rs.original_max_position_embeddings, "rope_scaling.original_max_position_embeddings")));
    w.set(a + "rope.scaling.yarn_log_multiplier", Value::f32(float(0.1 * rs.mscale_all_dim)));
  }
  w.set(a + "attention.kv_lora_rank", Value::u32(u32_field(c.kv_lora_rank, "kv_lora_rank")));
  w.set(a + "leading_dense_block_count",
        Value::u32(u32_field(c.is_moe() ? c.first_k_dense_replace : c.num_hidden_layers, "first_k_dense_replace")));
  w.set(a + "expert_shared_count", Value::u32(u32_field(c.n_shared_experts, "n_shared_experts")));
  if (!c.is_moe()) return;
  w.set(a + "expert_weights_scale", Value::f32(float(c.routed_scaling_factor)));
  w.set(a + "expert_weights_norm", Value::boolean(c.norm_topk_prob));
  w.set(a + "expert_gating_func", Value::u32(c.scoring_func == "sigmoid" ? 2u : 1u));  // llama.cpp's enum
  if (c.topk_method != "greedy" && c.n_group > 1) {
    w.set(a + "expert_group_count", Value::u32(u32_field(c.n_group, "n_group")));
    w.set(a + "expert_group_used_count", Value::u32(u32_field(c.topk_group, "topk_group")));
  }
}

// kv_b_proj [H*(nope+v), kv_lora] -> attn_k_b ne {nope, kv_lora, H} (per head the nope rows,
// transposed) and attn_v_b ne {kv_lora, v, H} (per head the value rows), as llama.cpp's converter
// splits it for the absorbed attention. Written in f32/f16/bf16 (f16 for a quantized file: the
// per-head matrices are small and their rows rarely a block multiple).
void split_kv_b(const ModelConfig& c, const TensorView& v, int64_t layer, GGMLType wtype, std::vector<Job>& jobs) {
  const int64_t H = c.num_attention_heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim, kvl = c.kv_lora_rank;
  check_shape(v, {H * (nope + dv), kvl});
  std::vector<float> W(size_t(v.numel()));
  convert_to_f32(v.dtype, v.data, W.data(), W.size());
  const GGMLType gt = gguf::ggml_type_is_block_quant(wtype) ? GGMLType::F16 : wtype;
  auto job = [&](const std::string& name, std::vector<int64_t> ne) {
    Job j;
    j.name = name;
    j.gtype = gt;
    j.out = gt == GGMLType::F16 ? DType::F16 : gt == GGMLType::BF16 ? DType::BF16 : DType::F32;
    j.rows = ne[1] * ne[2];
    j.cols = ne[0];
    j.ne = std::move(ne);
    j.generated.reserve(size_t(j.rows * j.cols));
    return j;
  };
  const std::string l = std::to_string(layer);
  Job kb = job("blk." + l + ".attn_k_b.weight", {nope, kvl, H});
  Job vb = job("blk." + l + ".attn_v_b.weight", {kvl, dv, H});
  for (int64_t h = 0; h < H; ++h) {
    const float* Wh = W.data() + size_t(h * (nope + dv) * kvl);
    for (int64_t j = 0; j < kvl; ++j)
      for (int64_t i = 0; i < nope; ++i) kb.generated.push_back(Wh[i * kvl + j]);
    for (int64_t i = 0; i < dv; ++i)
      for (int64_t j = 0; j < kvl; ++j) vb.generated.push_back(Wh[(nope + i) * kvl + j]);
  }
  jobs.push_back(std::move(kb));
  jobs.push_back(std::move(vb));
}

}  // namespace

// ------------------------------------------------------------------------------------------------
int64_t llama_qk_source_row(int64_t row, int64_t head_dim) {
  const int64_t h = row / head_dim, k = row % head_dim, half = head_dim / 2;
  return h * head_dim + (k % 2) * half + k / 2;
}

std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const auto& rs = c.rope_scaling;
  const int64_t dim = c.head_dim;
  const double low_wavelen = double(rs.original_max_position_embeddings) / rs.low_freq_factor;
  const double high_wavelen = double(rs.original_max_position_embeddings) / rs.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < dim; i += 2) {
    // The converter computes the base frequencies in float32; so do we, so the band edges agree.
    float freq = 1.0f / std::pow(float(c.rope_theta), float(i) / float(dim));
    double wavelen = 2 * M_PI / double(freq);
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(float(rs.factor));
    } else {
      double smooth = (double(rs.original_max_position_embeddings) / wavelen - rs.low_freq_factor) /
                      (rs.high_freq_factor - rs.low_freq_factor);
      out.push_back(float(1.0 / ((1 - smooth) / rs.factor + smooth)));
    }
  }
  return out;
}

std::string gguf_arch_for(const ModelConfig& c, const std::string& opt_arch) {
  if (!opt_arch.empty()) {
    require(opt_arch == "llama" || opt_arch == gguf_arch_for(c, ""), "--arch",
            "'" + opt_arch + "' is not possible for a " + family_name(c.family) + " model (use 'llama' or leave it out)",
            kExitUsage);
    require(!(opt_arch == "llama" && (c.family == Family::Qwen3 || c.family == Family::Qwen3Moe)), "--arch",
            family_name(c.family) + " needs its q_norm/k_norm and cannot be exported as arch 'llama'", kExitUsage);
    require(!(opt_arch == "llama" && c.mla()), "--arch",
            family_name(c.family) + " has latent attention and cannot be exported as arch 'llama'", kExitUsage);
    return opt_arch;
  }
  switch (c.family) {
    case Family::Llama:
    case Family::Mistral: return "llama";
    case Family::Qwen2:
      // llama.cpp's qwen2 graph assumes q/o projections of n_embd x n_embd.
      return c.q_dim() == c.hidden_size && c.rope_scaling.type != "llama3" ? "qwen2" : "llama";
    case Family::Qwen3: return "qwen3";
    case Family::Qwen3Moe: return "qwen3moe";
    case Family::DeepseekV2:
    case Family::DeepseekV3: return "deepseek2";
  }
  return "llama";
}

std::string detect_tokenizer_pre(const TokenizerJson& tok) {
  static const std::string kLlama3 =
      R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
  static const std::string kQwen2 =
      R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
  std::string re = tok.split_regex();
  if (re == kLlama3) return "llama-bpe";
  if (re == kQwen2) return "qwen2";
  if (re.empty() && tok.pre_tokenizer.is_object() && tok.pre_tokenizer.value("type", "") == "ByteLevel" &&
      tok.pre_tokenizer.value("use_regex", true))
    return "gpt-2";
  throw Error(tok.path + ": pre_tokenizer",
              "unrecognised pre-tokenizer (known: Qwen2/3 'qwen2', Llama-3 'llama-bpe', GPT-2 'gpt-2'); pass "
              "--tokenizer-pre NAME with the llama.cpp name");
}

std::string add_tokenizer_metadata(GGUFWriter& w, const TokenizerJson& tok, const ModelConfig& c,
                                   const std::string& pre_override, std::string* pre_out) {
  const int64_t n_vocab = c.vocab_size;
  require(tok.size() <= n_vocab, tok.path,
          "tokenizer has " + std::to_string(tok.size()) + " token ids but the model's vocab_size is " +
              std::to_string(n_vocab));
  const bool spm = tok.is_sentencepiece_bpe();
  const std::string model = spm ? "llama" : "gpt2";
  const std::string pre = !pre_override.empty() ? pre_override : spm ? "default" : detect_tokenizer_pre(tok);
  if (pre_out) *pre_out = pre;

  std::unordered_set<int64_t> special_ids;
  for (auto id : {tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id})
    if (id) special_ids.insert(*id);

  std::vector<std::string> tokens(static_cast<size_t>(n_vocab));
  std::vector<int32_t> types(static_cast<size_t>(n_vocab));
  for (int64_t i = 0; i < n_vocab; ++i) {
    const std::string* t = i < tok.size() ? &tok.id_to_token[size_t(i)] : nullptr;
    if (!t || t->empty()) {
      // As the converter: ids the tokenizer does not define (Qwen pads its embedding to a multiple
      // of 128) get unique placeholders so llama.cpp's text->id map stays one-to-one.
      tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";
      types[size_t(i)] = gguf::kTokUnused;
      continue;
    }
    tokens[size_t(i)] = *t;
    const AddedToken* a = tok.added(i);
    if (spm && is_byte_token(*t)) {
      types[size_t(i)] = gguf::kTokByte;
    } else if (spm && tok.unk_id && i == *tok.unk_id) {
      types[size_t(i)] = gguf::kTokUnknown;
    } else if (a) {
      types[size_t(i)] = (a->special || looks_special(*t) || special_ids.count(i)) ? gguf::kTokControl
                                                                                  : gguf::kTokUserDefined;
    } else {
      types[size_t(i)] = special_ids.count(i) ? gguf::kTokControl : gguf::kTokNormal;
    }
  }
  {
    std::unordered_set<std::string> seen;
    seen.reserve(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i)
      require(seen.insert(tokens[i]).second, tok.path, "token text '" + tokens[i] + "' appears twice (id " + std::to_string(i) + ")");
  }

  w.set("tokenizer.ggml.model", Value::string(model));
  w.set("tokenizer.ggml.pre", Value::string(pre));
  if (spm) {
    // llama.cpp's SPM tokenizer falls back to <0xXX> tokens for every byte it cannot cover and
    // aborts if one is missing.
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      require(tok.find(name).has_value(), tok.path, std::string("byte-fallback tokenizer lacks byte token ") + name);
    }
    // Scores: llama.cpp's SPM tokenizer merges the adjacent pair whose concatenation scores
    // highest. HF's BPE applies merges by rank, so a token's score is minus the rank of the first
    // merge that produces it; tokens no merge produces rank below every merge.
    const float no_merge = -float(tok.merges.size());
    std::vector<float> scores(static_cast<size_t>(n_vocab), 0.0f);
    std::vector<bool> set(static_cast<size_t>(n_vocab), false);
    for (size_t r = 0; r < tok.merges.size(); ++r) {
      auto id = tok.find(tok.merges[r].first + tok.merges[r].second);
      if (id && *id < n_vocab && !set[size_t(*id)]) {
        scores[size_t(*id)] = -float(r);
        set[size_t(*id)] = true;
      }
    }
    for (int64_t i = 0; i < n_vocab; ++i)
      if (!set[size_t(i)] && types[size_t(i)] == gguf::kTokNormal) scores[size_t(i)] = no_merge - float(i);
    w.set("tokenizer.ggml.tokens", Value::array_strings(std::move(tokens)));
    w.set("tokenizer.ggml.scores", Value::array_f32(scores));
    w.set("tokenizer.ggml.token_type", Value::array_i32(types));
  } else {
    w.set("tokenizer.ggml.tokens", Value::array_strings(std::move(tokens)));
    w.set("tokenizer.ggml.token_type", Value::array_i32(types));
    std::vector<std::string> merges;
    merges.reserve(tok.merges.size());
    // Spaces inside a merge part would break the "left right" encoding; the converter writes
    // them as U+0120 (the byte-level alphabet's space).
    auto enc = [](const std::string& s) {
      std::string o;
      for (char ch : s) o += ch == ' ' ? std::string("\xc4\xa0") : std::string(1, ch);
      return o;
    };
    for (const auto& [a, b] : tok.merges) merges.push_back(enc(a) + " " + enc(b));
    w.set("tokenizer.ggml.merges", Value::array_strings(std::move(merges)));
  }

  auto id_or = [&](std::optional<int64_t> a, std::optional<int64_t> b) { return a ? a : b; };
  std::optional<int64_t> bos = id_or(tok.bos_id, c.bos_token_id), eos = id_or(tok.eos_id, c.eos_token_id);
  auto set_id = [&](const std::string& key, std::optional<int64_t> id) {
    if (id && *id >= 0 && *id < n_vocab) w.set(key, Value::u32(uint32_t(*id)));
  };
  set_id("tokenizer.ggml.bos_token_id", bos);
  set_id("tokenizer.ggml.eos_token_id", eos);
  set_id("tokenizer.ggml.unknown_token_id", tok.unk_id);
  set_id("tokenizer.ggml.padding_token_id", tok.pad_id);
  // llama.cpp's own defaults when the key is absent: SPM and llama-bpe add BOS, qwen2 does not.
  bool add_bos = tok.add_bos.value_or(pre != "qwen2");
  w.set("tokenizer.ggml.add_bos_token", Value::boolean(add_bos));
  w.set("tokenizer.ggml.add_eos_token", Value::boolean(tok.add_eos.value_or(false)));
  if (spm && tok.config.is_object() && tok.config.contains("add_prefix_space") &&
      tok.config["add_prefix_space"].is_boolean())
    w.set("tokenizer.ggml.add_space_prefix", Value::boolean(tok.config["add_prefix_space"].get<bool>()));
  if (!tok.chat_template.empty()) w.set("tokenizer.chat_template", Value::string(tok.chat_template));
  return model;
}

void add_opaque_tokenizer_metadata(GGUFWriter& w, const ModelConfig& c) {
  const int64_t n = c.vocab_size;
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> types(static_cast<size_t>(n), gguf::kTokNormal);
  for (int64_t i = 0; i < n; ++i) tokens[size_t(i)] = "[T" + std::to_string(i) + "]";
  std::optional<int64_t> pad;
  if (c.raw.is_object() && c.raw.contains("pad_token_id") && c.raw["pad_token_id"].is_number_integer())
    pad = c.raw["pad_token_id"].get<int64_t>();
  for (auto id : {c.bos_token_id, c.eos_token_id, pad})
    if (id && *id >= 0 && *id < n) types[size_t(*id)] = gguf::kTokControl;
  w.set("tokenizer.ggml.model", Value::string("gpt2"));
  w.set("tokenizer.ggml.pre", Value::string("default"));
  w.set("tokenizer.ggml.tokens", Value::array_strings(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", Value::array_i32(types));
  w.set("tokenizer.ggml.merges", Value::array_strings({}));
  auto set_id = [&](const std::string& key, std::optional<int64_t> id) {
    if (id && *id >= 0 && *id < n) w.set(key, Value::u32(uint32_t(*id)));
  };
  set_id("tokenizer.ggml.bos_token_id", c.bos_token_id);
  set_id("tokenizer.ggml.eos_token_id", c.eos_token_id);
  set_id("tokenizer.ggml.padding_token_id", pad);
  // The client sends complete id sequences (BOS included); the server must not add any.
  w.set("tokenizer.ggml.add_bos_token", Value::boolean(false));
  w.set("tokenizer.ggml.add_eos_token", Value::boolean(false));
}

GGUFExportResult export_gguf(const HFModel& model, const std::string& out_path, DType dtype,
                             const GGUFExportOptions& opt) {
  return export_gguf(model, out_path, ggml_type_of(dtype), opt);
}

GGUFExportResult export_gguf(const HFModel& model, const std::string& out_path, GGMLType wtype,
                             const GGUFExportOptions& opt) {
  const ModelConfig& c = model.config();
  require(gguf::ggml_type_writable(wtype), "--dtype",
          "GGUF export supports f32, f16, bf16, q8_0 and q4_0, not " + gguf::ggml_type_name(wtype), kExitUsage);
  const std::string arch = gguf_arch_for(c, opt.arch);
  const bool permute = arch == "llama";
  const std::string& rope = c.rope_scaling.type;
  require(rope.empty() || rope == "llama3" || rope == "linear" || (rope == "yarn" && c.mla()), "config.json: rope_scaling",
          "type '" + rope + "' is not supported by the GGUF exporter (none, linear, llama3; yarn for DeepSeek)");
  require(rope != "llama3" || arch == "llama", "config.json: rope_scaling",
          "llama3 rope scaling is only expressible for arch llama (rope_freqs.weight)");
  // llama.cpp's llama graph adds an attn_output.bias when present; its qwen2/qwen3 graphs do not.
  require(!c.o_bias() || arch == "llama", "config.json: attention_bias",
          "an o_proj bias is only supported for arch llama (use --arch llama)");
  require(!permute || c.head_dim % 2 == 0, "config.json: head_dim", "must be even for rotary embeddings");
  if (c.mla()) check_deepseek2(c);
  if (c.is_moe() && !c.mla()) {
    // llama.cpp's qwen3moe graph builds every layer as sparse and always divides the top-k
    // router weights by their sum (build_moe_ffn with norm_w = true; no GGUF key turns it off).
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      require(c.is_moe_layer(l), "config.json: mlp_only_layers / decoder_sparse_step",
              "layer " + std::to_string(l) + " is a dense MLP; llama.cpp's qwen3moe has only sparse layers");
    require(c.norm_topk_prob, "config.json: norm_topk_prob",
            "is false, but llama.cpp's qwen3moe always renormalises the top-k router weights, so the served "
            "model would compute another function");
  }

  // Load the tokenizer first: a bad tokenizer should fail before minutes of conversion.
  std::optional<TokenizerJson> tok;
  if (!opt.opaque_vocab) {
    std::string tok_dir = opt.tokenizer_dir.empty() ? model.dir() : opt.tokenizer_dir;
    require(fs::exists(fs::path(tok_dir) / "tokenizer.json"), tok_dir,
            "no tokenizer.json (llama.cpp needs the vocabulary in the GGUF; pass --tokenizer DIR, or "
            "--opaque-vocab for an obfuscated model)");
    tok = TokenizerJson::load(tok_dir);
  }

  GGUFWriter w(out_path, opt.overwrite);
  GGUFExportResult res;
  res.arch = arch;

  std::string name = opt.name;
  if (name.empty()) name = fs::path(model.dir()).filename().string();
  if (name.empty()) name = fs::path(model.dir()).parent_path().filename().string();
  const uint32_t file_type = gguf::gguf_file_type_for(wtype);
  w.set("general.architecture", Value::string(arch));
  w.set("general.type", Value::string("model"));
  w.set("general.name", Value::string(name));
  w.set("general.file_type", Value::u32(file_type));
  if (gguf::ggml_type_is_block_quant(wtype))
    w.set("general.quantization_version", Value::u32(gguf::kQuantizationVersion));
  const std::string a = arch + ".";
  w.set(a + "vocab_size", Value::u32(u32_field(c.vocab_size, "vocab_size")));
  w.set(a + "context_length", Value::u32(u32_field(c.max_position_embeddings, "max_position_embeddings")));
  w.set(a + "embedding_length", Value::u32(u32_field(c.hidden_size, "hidden_size")));
  w.set(a + "block_count", Value::u32(u32_field(c.num_hidden_layers, "num_hidden_layers")));
  w.set(a + "feed_forward_length", Value::u32(u32_field(c.intermediate_size, "intermediate_size")));
  if (c.mla()) add_deepseek2_metadata(w, c);
  if (c.is_moe()) {
    w.set(a + "expert_count", Value::u32(u32_field(c.num_experts, "num_experts")));
    w.set(a + "expert_used_count", Value::u32(u32_field(c.num_experts_per_tok, "num_experts_per_tok")));
    w.set(a + "expert_feed_forward_length", Value::u32(u32_field(c.moe_intermediate_size, "moe_intermediate_size")));
  }
  w.set(a + "attention.head_count", Value::u32(u32_field(c.num_attention_heads, "num_attention_heads")));
  if (!c.mla()) {
    w.set(a + "attention.head_count_kv", Value::u32(u32_field(c.num_key_value_heads, "num_key_value_heads")));
    // Always explicit: obfuscated models have hidden_size != heads * head_dim, and llama.cpp would
    // otherwise derive head_dim = hidden_size / heads.
    w.set(a + "attention.key_length", Value::u32(u32_field(c.head_dim, "head_dim")));
    w.set(a + "attention.value_length", Value::u32(u32_field(c.head_dim, "head_dim")));
  }
  w.set(a + "attention.layer_norm_rms_epsilon", Value::f32(float(c.rms_norm_eps)));
  w.set(a + "rope.freq_base", Value::f32(float(c.rope_theta)));
  w.set(a + "rope.dimension_count", Value::u32(u32_field(c.rope_dim(), c.mla() ? "qk_rope_head_dim" : "head_dim")));
  if (rope == "linear") {
    w.set(a + "rope.scaling.type", Value::string("linear"));
    w.set(a + "rope.scaling.factor", Value::f32(float(c.rope_scaling.factor)));
  }

  res.n_vocab = c.vocab_size;
  if (tok) {
    std::string pre;
    res.tokenizer_model = add_tokenizer_metadata(w, *tok, c, opt.tokenizer_pre, &pre);
    res.tokenizer_pre = pre;
    res.n_tokenizer_tokens = tok->size();
  } else {
    add_opaque_tokenizer_metadata(w, c);
    res.tokenizer_model = "gpt2";
    res.tokenizer_pre = "default (opaque)";
    res.n_tokenizer_tokens = 0;
  }

  // ---- tensor plan ----
  const SafetensorsReader& st = model.weights();
  std::vector<Job> jobs;
  auto matrix = [&](const std::string& gname, const std::string& hf, int64_t rows, int64_t cols, int64_t perm_hd) {
    const TensorView& v = st.get(hf);
    check_shape(v, {rows, cols});
    Job j;
    j.name = gname;
    j.src = &v;
    j.rows = rows;
    j.cols = cols;
    j.two_d = true;
    j.permute_head_dim = perm_hd;
    j.gtype = gguf::gguf_tensor_type(gname, true, cols, wtype);
    j.out = j.gtype == GGMLType::F16 ? DType::F16 : j.gtype == GGMLType::BF16 ? DType::BF16 : DType::F32;
    jobs.push_back(std::move(j));
  };
  auto vec = [&](const std::string& gname, const std::string& hf, int64_t n, int64_t perm_hd = 0) {
    const TensorView& v = st.get(hf);
    check_shape(v, {n});
    Job j;
    j.name = gname;
    j.src = &v;
    j.cols = n;
    j.permute_head_dim = perm_hd;
    j.out = DType::F32;
    // A bias is one "column" per output row: permute it as n rows of 1 element.
    if (perm_hd > 0) {
      j.rows = n;
      j.cols = 1;
    }
    jobs.push_back(std::move(j));
  };

  // Experts [E x (rows, cols)] -> one 3-D tensor ne = {cols, rows, E}.
  auto stacked = [&](const std::string& gname, const layout::TensorDef& t, int64_t layer, int64_t rows, int64_t cols) {
    Job j;
    j.name = gname;
    j.rows = rows;
    j.cols = cols;
    j.two_d = true;
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const TensorView& v = st.get(layout::hf_name(t, layer, e));
      check_shape(v, {rows, cols});
      j.stack.push_back(&v);
    }
    j.gtype = gguf::gguf_tensor_type(gname, true, cols, wtype);
    j.out = j.gtype == GGMLType::F16 ? DType::F16 : j.gtype == GGMLType::BF16 ? DType::BF16 : DType::F32;
    jobs.push_back(std::move(j));
  };

  if (rope == "llama3") {
    Job j;
    j.name = "rope_freqs.weight";
    j.generated = llama3_rope_factors(c);
    j.cols = int64_t(j.generated.size());
    jobs.push_back(std::move(j));
  }
  // One job per layout row, in the layout's order. llama.cpp's llama arch wants q and k rows (and
  // their biases) interleaved per RoPE pair; its NEOX archs keep HF's order.
  const layout::Dims dims = layout::Dims::of(c);
  const int64_t phd = permute ? c.head_dim : 0;
  auto add_row = [&](const layout::TensorDef& t, int64_t layer) {
    const std::string gname = layout::gguf_name(t, layer);
    const int64_t rows = dims[t.rows], cols = dims[t.cols];
    if (t.scope == layout::Scope::Expert) return stacked(gname, t, layer, rows, cols);
    std::string hf = layout::hf_name(t, layer);
    // Always an explicit head (the embedding when tied): simplest for llama.cpp and required for
    // obfuscated models, whose head and embedding differ.
    if (t.role == layout::Role::Head && (c.tie_word_embeddings || !st.has(hf)))
      hf = layout::hf_name(c, layout::Role::Embedding);
    if (t.role == layout::Role::KvB) return split_kv_b(c, st.get(hf), layer, wtype, jobs);
    const int64_t perm = t.rope_rows ? phd : 0;
    if (t.cols == layout::Dim::None) vec(gname, hf, rows, perm);
    else matrix(gname, hf, rows, cols, perm);
  };
  auto exists = [&](const layout::TensorDef& t, int64_t layer) {
    if (t.role == layout::Role::Head) return true;
    // q/k/v biases: written when the checkpoint holds them even if config.json does not say so.
    if (t.when == layout::When::AttnBias) return c.attention_bias || st.has(layout::hf_name(t, layer));
    return layout::present(t, c, layer);
  };
  const auto& table = layout::table(c.family);
  for (const auto& t : table)
    if (t.role == layout::Role::Embedding) add_row(t, -1);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    for (size_t k = 0; k < table.size(); ++k) {
      const layout::TensorDef& t = table[k];
      if (t.scope == layout::Scope::Model || !exists(t, i)) continue;
      add_row(t, i);
    }
  for (const auto& t : table)
    if (t.scope == layout::Scope::Model && t.role != layout::Role::Embedding && exists(t, -1)) add_row(t, -1);

  uint64_t total = 0;
  for (const auto& j : jobs) {
    std::vector<int64_t> ne = !j.ne.empty() ? j.ne
                              : j.two_d    ? std::vector<int64_t>{j.cols, j.rows}
                                           : std::vector<int64_t>{j.rows * j.cols};
    if (!j.stack.empty()) ne.push_back(int64_t(j.stack.size()));
    w.add_tensor(j.name, ne, j.gtype);
    total += j.out_bytes();
    if (j.src) res.bytes_in += j.src->nbytes;
    for (const TensorView* v : j.stack) res.bytes_in += v->nbytes;
  }
  res.n_tensors = int64_t(jobs.size());

  std::optional<Progress> prog;
  if (opt.progress) prog.emplace("convert " + fs::path(out_path).filename().string(), total, "B");
  std::vector<float> f32buf;
  std::vector<uint8_t> outbuf;
  for (const auto& j : jobs) write_job(w, j, f32buf, outbuf, prog ? &*prog : nullptr);
  w.finish();
  if (prog) prog->finish();
  res.bytes_out = w.bytes_written();
  return res;
}

}  // namespace aloepri
