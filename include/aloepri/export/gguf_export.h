// Hugging Face checkpoint -> GGUF for llama.cpp, streaming one tensor (in row chunks) at a time.
//
// Families: llama and mistral -> arch "llama" (Q/K rows permuted from HF's rotate_half layout to
// llama.cpp's interleaved pairs); qwen2 -> arch "qwen2" (NEOX rope, no permutation) unless
// hidden_size != heads * head_dim, which llama.cpp's qwen2 graph cannot express, in which case it
// goes out as arch "llama" (permuted Q/K, with q/k/v biases, identical maths); qwen3 -> arch
// "qwen3" (q_norm / k_norm, no permutation); qwen3_moe -> arch "qwen3moe" (the router as
// ffn_gate_inp, the experts stacked into 3-D ffn_{gate,up,down}_exps; every layer sparse and
// norm_topk_prob true, as llama.cpp's graph assumes, or the export is refused).
// Every shape-defining key is written explicitly (key_length/value_length included), output.weight
// is always written (the embedding when the HF model is tied), norms and biases are F32.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/core/dtype.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/formats/tokenizer_json.h"

namespace aloepri {

class HFModel;

struct GGUFExportOptions {
  bool overwrite = false;
  std::string name;           // general.name; default: the model directory's name
  std::string tokenizer_dir;  // default: the model directory
  std::string arch;           // "" = automatic (above); "llama" forces the llama arch
  std::string tokenizer_pre;  // "" = detect from the pre-tokenizer regex ("qwen2", "llama-bpe")
  // For obfuscated checkpoints: their ids are a secret permutation of the tokenizer's, so the real
  // vocabulary would be wrong there, and llama.cpp derives behaviour from token text (it treats
  // "<|im_end|>", "<|endoftext|>", ... as end-of-generation wherever they sit). Opaque mode writes
  // placeholder tokens "[T{i}]" (byte-level BPE, no merges: the server never tokenizes text) and
  // takes bos/eos/pad ids from config.json, which hold the permuted ids. No tokenizer file needed.
  bool opaque_vocab = false;
  bool progress = true;
};

struct GGUFExportResult {
  std::string arch, tokenizer_model, tokenizer_pre;
  int64_t n_tensors = 0, n_vocab = 0, n_tokenizer_tokens = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
};

// dtype: F32, F16 or BF16 for the matrices. Throws Error (file / tensor / field named) on an
// unsupported model or tokenizer, or Error(kExitOutputExists) if out_path exists and !overwrite.
GGUFExportResult export_gguf(const HFModel& model, const std::string& out_path, DType dtype,
                             const GGUFExportOptions& opt = {});
// Any GGUF matrix type: F32, F16, BF16, or ggml's Q8_0 / Q4_0 blocks (which tensors are
// quantized, and how: include/aloepri/gguf_quant.h).
GGUFExportResult export_gguf(const HFModel& model, const std::string& out_path, gguf::GGMLType matrix_type,
                             const GGUFExportOptions& opt = {});

// --- pieces, exposed for tests and other tools ---

// The arch export_gguf picks for this config (opt_arch as in GGUFExportOptions::arch).
std::string gguf_arch_for(const ModelConfig& c, const std::string& opt_arch = "");
// Row r of a llama-permuted Q or K weight (or bias) holds HF row llama_qk_source_row(r, head_dim):
// within each head, HF keeps the two rotary halves apart (rotate_half) while llama.cpp wants the
// pairs interleaved, so output row 2i+j of a head comes from HF row j*head_dim/2 + i.
int64_t llama_qk_source_row(int64_t row, int64_t head_dim);
// Per-pair frequency divisors of llama3 rope scaling (rope_freqs.weight, head_dim/2 values).
std::vector<float> llama3_rope_factors(const ModelConfig& c);
// "qwen2", "llama-bpe" or "gpt-2" for byte-level BPE, from the pre-tokenizer; throws if unknown.
std::string detect_tokenizer_pre(const TokenizerJson& tok);
// Writes tokenizer.* metadata for a model with n_vocab embedding rows (the token list is padded
// with [PAD{i}] placeholders up to n_vocab). Returns the tokenizer model name ("llama"/"gpt2").
std::string add_tokenizer_metadata(gguf::GGUFWriter& w, const TokenizerJson& tok, const ModelConfig& c,
                                   const std::string& pre_override = "", std::string* pre_out = nullptr);

// Opaque vocabulary (see GGUFExportOptions::opaque_vocab).
void add_opaque_tokenizer_metadata(gguf::GGUFWriter& w, const ModelConfig& c);

}  // namespace aloepri
