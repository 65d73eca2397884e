// Hugging Face fast-tokenizer files read as data: tokenizer.json (vocabulary, merges, added
// tokens, pipeline pieces) and tokenizer_config.json (special tokens, add_bos/add_eos, chat
// template). This is only a loader; the encoder lives in src/client.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace aloepri {

struct AddedToken {
  int64_t id = -1;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

struct TokenizerJson {
  std::string path;                 // tokenizer.json that was read
  std::string model_type;           // model.type; only "BPE" is accepted
  bool byte_fallback = false;       // SentencePiece-style BPE with <0xXX> byte tokens
  bool ignore_merges = false;       // Llama-3: whole words found in the vocab skip merging
  std::string unk_token;            // model.unk_token, "" if none

  // id -> text for the base vocabulary and every added token; size = largest id + 1. Ids that
  // nothing claims are "" (holes are rejected by the GGUF exporter only if the model uses them).
  std::vector<std::string> id_to_token;
  std::unordered_map<std::string, int64_t> token_to_id;
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  std::vector<AddedToken> added_tokens;                     // as listed in tokenizer.json

  // From tokenizer_config.json ({bos,eos,unk,pad}_token resolved to ids through the added tokens,
  // then the vocabulary) and add_{bos,eos}_token, else the post_processor template.
  std::optional<int64_t> bos_id, eos_id, unk_id, pad_id;
  std::optional<bool> add_bos, add_eos;
  std::string chat_template;  // "" if none

  nlohmann::json normalizer, pre_tokenizer, decoder, post_processor;  // verbatim (null if absent)
  nlohmann::json config;  // tokenizer_config.json as read (null if absent)

  int64_t size() const { return int64_t(id_to_token.size()); }
  std::optional<int64_t> find(const std::string& token) const;
  const AddedToken* added(int64_t id) const;  // nullptr if id is not an added token
  // SentencePiece-style BPE (Llama-2, Mistral): byte_fallback and the U+2581 space marker.
  bool is_sentencepiece_bpe() const { return byte_fallback; }
  // The regex of the pre_tokenizer's Split step ("" if there is none); byte-level BPE only.
  std::string split_regex() const;

  // dir_or_file: a directory holding tokenizer.json (+ optional tokenizer_config.json), or the
  // tokenizer.json itself. Throws Error naming the file and field on malformed input.
  static TokenizerJson load(const std::string& dir_or_file);
};

}  // namespace aloepri
