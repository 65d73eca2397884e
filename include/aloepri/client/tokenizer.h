// Hugging Face tokenizers in C++: loads tokenizer.json + tokenizer_config.json and encodes /
// decodes exactly like transformers.js (@lenml/tokenizers), which the parity test checks id for
// id on several MB of mixed text.
//
// Supported: BPE models in the two families that matter for chat LLMs:
//  - byte-level BPE (GPT-2 style; Qwen2/3, Llama-3, DeepSeek): NFC normalizer, Split pre-tokenizer
//    with the file's Unicode regex (PCRE2, UTF + UCP, JIT), ByteLevel byte<->unicode mapping;
//  - SentencePiece-style BPE (Llama-2, Mistral): Prepend/Replace normalizers or Metaspace,
//    <0xXX> byte fallback, fuse_unk; decoder chain Replace/ByteFallback/Fuse/Strip.
// Added/special tokens are split out first (leftmost-longest, lstrip/rstrip honoured); the
// post-processor (TemplateProcessing) adds BOS/EOS when add_special is requested.
// A Tokenizer is immutable after loading and cheap to copy (shared state); encode/decode may run
// concurrently on several threads (the BPE cache and regex scratch are per thread).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace aloepri {

struct DecodeOptions {
  bool skip_special = false;
  // clean_up_tokenization_spaces (" ." -> "." etc.); unset = the tokenizer_config's value
  // (transformers.js default: true when the config does not say).
  std::optional<bool> cleanup;
};

class IncrementalDecoder;

class Tokenizer {
 public:
  // PATH = a model directory (tokenizer.json [+ tokenizer_config.json]) or a tokenizer.json file
  // (tokenizer_config.json is then looked for next to it). Throws Error naming the file/field.
  static Tokenizer load(const std::string& path);
  // From parsed JSON (cfg may be null). `where` names the source in error messages.
  static Tokenizer from_json(const nlohmann::json& tokenizer_json, const nlohmann::json& config,
                             const std::string& where);

  // Encodes UTF-8 text (invalid UTF-8 is replaced by U+FFFD first, as a JS string would be).
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  std::string decode(std::span<const int32_t> ids, const DecodeOptions& opt = {}) const;
  IncrementalDecoder decoder(const DecodeOptions& opt = {}) const;
  // Encoding caches BPE results of short pre-tokens per thread; this empties the calling
  // thread's cache (benchmarks use it to measure cold-cache throughput).
  void clear_cache() const;

  size_t vocab_size() const;  // highest id + 1 (base vocabulary and added tokens)
  std::optional<int32_t> token_to_id(std::string_view token) const;  // token as stored in the file
  std::string id_to_token(int32_t id) const;                          // "" if unknown
  bool is_special(int32_t id) const;
  bool is_added(int32_t id) const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::string bos_token() const;  // "" when none
  std::string eos_token() const;

  const nlohmann::json& config() const;  // tokenizer_config.json (empty object if absent)
  std::string chat_template() const;     // "" when the config has none
  std::string tokenizer_class() const;   // tokenizer_config's tokenizer_class, "" if absent
  bool byte_level() const;               // byte-level BPE (else SentencePiece style)

  struct Impl;

 private:
  friend class IncrementalDecoder;
  std::shared_ptr<const Impl> impl_;
};

// Streaming detokenizer: push generated ids one at a time and get back the text that is complete
// so far. A UTF-8 character whose bytes are spread over several byte tokens comes out whole, once
// its last byte arrives; the concatenation of all push() results plus finish() equals
// Tokenizer::decode() of all ids with the same options.
class IncrementalDecoder {
 public:
  std::string push(int32_t id);
  std::string push(std::span<const int32_t> ids);
  std::string finish();  // flushes held-back bytes (an incomplete character becomes U+FFFD)

 private:
  friend class Tokenizer;
  IncrementalDecoder(std::shared_ptr<const Tokenizer::Impl> impl, const DecodeOptions& opt);
  std::string take(bool final);
  std::shared_ptr<const Tokenizer::Impl> impl_;
  bool skip_special_ = false, cleanup_ = false;
  // UTF-8 decoding state (WHATWG TextDecoder semantics, streaming).
  std::string partial_;      // bytes of an incomplete character
  int need_ = 0;             // continuation bytes still expected
  unsigned char lo_ = 0x80, hi_ = 0xBF;
  std::string out_;          // decoded text not yet returned (held back for clean-up context)
  int strip_left_ = 0;       // leading spaces the Strip decoder may still remove
  bool first_token_ = true;  // Metaspace decoder: only the first token loses its prefix space
  bool in_byte_run_ = false; // inside a run of <0xXX> tokens (ByteFallback)
  std::string run_head_;     // first bytes of the current run (a leading BOM is dropped)
  bool head_open_ = false;   // run_head_ still undecided (could be the start of a BOM)
  void feed(std::string_view bytes);
  void end_run();
};

// Helpers shared with the chat templates and tests.
// Replaces invalid UTF-8 by U+FFFD exactly like the WHATWG TextDecoder (one per maximal subpart).
std::string utf8_sanitize(std::string_view s);
// JavaScript's String.prototype.trim whitespace (also what transformers.js' Jinja `trim` uses).
bool js_is_space(char32_t cp);
std::string js_trim(std::string_view s, bool left = true, bool right = true);

}  // namespace aloepri
