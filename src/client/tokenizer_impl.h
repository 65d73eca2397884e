// Internal state of aloepri::Tokenizer, shared by tokenizer.cpp (loading, encoding) and
// tokenizer_decode.cpp (decoding, streaming). Not part of the public API.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "aloepri/client/tokenizer.h"

namespace aloepri {

// (left symbol, right symbol) -> (rank, merged symbol), open addressing: the BPE inner loop does
// one lookup per adjacent pair, so this must be cheaper than std::unordered_map.
class MergeTable {
 public:
  struct Hit {
    int32_t rank, result;
  };
  void reserve(size_t n);
  void put(int32_t a, int32_t b, int32_t rank, int32_t result);  // later puts override (JS Map)
  const Hit* get(int32_t a, int32_t b) const {
    if (a < 0 || b < 0) return nullptr;
    uint64_t k = key(a, b);
    for (size_t i = hash(k) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == k) return &s.hit;
      if (s.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Hit hit{};
  };
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) {
    k ^= k >> 31;
    k *= 0x9E3779B97F4A7C15ull;
    return size_t(k ^ (k >> 29));
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, size_ = 0;
};

struct Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  Regex() = default;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

struct Tokenizer::Impl {
  std::string where;
  nlohmann::json config = nlohmann::json::object();
  static inline std::atomic<uint64_t> next_serial{1};
  uint64_t serial = next_serial++;  // identifies this instance to the per-thread BPE cache

  // ---- model (BPE) ----
  bool byte_level = false;  // model strings are byte-mapped: we work on raw bytes instead
  std::vector<std::string> id_token;   // id -> token exactly as in the file ("" for holes)
  std::vector<uint8_t> id_flags;       // kAdded | kSpecial
  std::unordered_map<std::string, int32_t> file_token_to_id;  // file spelling -> id
  std::unordered_map<std::string, int32_t> model_token_to_id; // model space (raw bytes if byte-level)
  std::vector<int32_t> sym_id;         // BPE symbol -> id (-1: not in the vocabulary)
  std::unordered_map<std::string, int32_t> sym_of;  // model-space string -> symbol
  int32_t byte_sym[256];
  MergeTable merges;
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  int32_t unk_id = -1;
  int32_t byte_token_id[256];  // <0xXX> ids for byte fallback (-1 if absent)
  bool split_at_metaspace = false;  // no merge crosses "x|▁": a long word may be cut there (speed)
  std::string unk_token;
  bool llama_non_legacy = false;  // LlamaTokenizer with legacy=false (see from_json)

  // ---- normalizer ----
  struct Norm {
    enum Kind { kNFC, kPrepend, kReplace, kStrip } kind;
    std::string a, b;  // Prepend: a; Replace: a -> b
    bool left = false, right = false;
  };
  std::vector<Norm> normalizers;

  // ---- pre-tokenizer ----
  struct Pre {
    enum Kind { kSplit, kByteLevel, kMetaspace } kind;
    std::shared_ptr<Regex> re;   // kSplit, or kByteLevel with use_regex
    bool invert = false, removed = false;
    bool add_prefix_space = false;
    std::string replacement;     // kMetaspace
    std::string prepend_scheme;  // "always" | "first" | "never"
  };
  std::vector<Pre> pretok;

  // ---- added tokens ----
  struct Added {
    int32_t id;
    std::string content;
    bool lstrip, rstrip, special;
  };
  std::vector<Added> added;
  // Byte trie over added-token contents: leftmost-longest split, like DictionarySplitter.
  struct TrieNode {
    std::unordered_map<unsigned char, int32_t> next;
    int32_t added = -1;  // index into `added` when a token ends here
  };
  std::vector<TrieNode> trie;
  bool first_byte[256] = {};

  // ---- post-processor ----
  bool has_template = false;
  std::vector<int32_t> single_prefix, single_suffix;

  // ---- decoder ----
  enum class Dec { kNone, kByteLevel, kPieces } dec = Dec::kNone;
  std::vector<std::pair<std::string, std::string>> dec_replace;  // applied to every piece
  bool dec_byte_fallback = false;
  int dec_strip_start = 0;          // Strip decoder: leading ' ' removed from the whole text
  bool dec_metaspace_first = false; // Metaspace decoder: first token's leading ' ' removed
  std::vector<std::string> id_bytes;  // byte-level: id -> raw bytes (added tokens: content)
  std::vector<int16_t> id_byte;       // <0xXX> tokens -> byte value, else -1
  bool cleanup_default = true;
  std::unordered_set<int32_t> special_ids;  // for skip_special (JS: special_tokens by content)

  std::optional<int32_t> bos, eos;
  std::string bos_tok, eos_tok;

  // Encoding internals (tokenizer.cpp).
  void encode_section(std::string_view text, size_t section_index, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_symbols(std::string_view word, std::vector<int32_t>& out) const;
};

// Unicode <-> byte mapping of GPT-2 byte-level BPE.
const std::vector<char32_t>& byte_to_unicode();
int unicode_to_byte(char32_t cp);  // -1 when cp is not a mapped byte
// UTF-8 helpers.
void append_utf8(std::string& out, char32_t cp);
// Decodes one code point of valid UTF-8 at s[i]; advances i.
char32_t next_cp(std::string_view s, size_t& i);
std::string clean_up_tokenization(std::string_view text);

}  // namespace aloepri
