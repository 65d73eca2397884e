// Unit tests of the tokenizer: UTF-8 handling, BPE merge order, byte fallback, added tokens,
// special tokens, streaming decode, errors and the tokenize/detokenize commands. Parity with
// transformers.js on real text is tests/tokenizer_parity_test.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "aloepri/core/rng.h"
#include "aloepri/client/tokenizer.h"
#include "support/paths.h"

using namespace aloepri;
using aloepri::testing::aloepri_exe;
using aloepri::testing::run_command;
using aloepri::testing::scratch_dir;
using aloepri::testing::vocab_dir;
using nlohmann::json;

namespace {

const Tokenizer& vocab(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, Tokenizer::load(vocab_dir(name))).first;
  return it->second;
}

// A small SentencePiece-style BPE: merges "a b" (rank 0), "b c" (1), "ab c" (2), "▁ a" (3);
// byte fallback tokens only for 0xC3 and 0xA9 (so "é" falls back, "ü" becomes <unk>).
Tokenizer tiny_sp(json added_extra = json::array()) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"<0xC3>", 3}, {"<0xA9>", 4}, {"a", 5}, {"b", 6},
                {"c", 7}, {"ab", 8}, {"bc", 9}, {"abc", 10}, {"\xE2\x96\x81", 11}, {"\xE2\x96\x81" "a", 12}};
  json added = json::array({{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                            {{"id", 1}, {"content", "<s>"}, {"special", true}},
                            {{"id", 2}, {"content", "</s>"}, {"special", true}}});
  for (auto& a : added_extra) {
    vocab[a["content"].get<std::string>()] = a["id"];
    added.push_back(a);
  }
  json tj = json::parse(R"({
    "model": {"type": "BPE", "merges": ["a b", "b c", "ab c", "\u2581 a"], "unk_token": "<unk>",
              "byte_fallback": true, "fuse_unk": true},
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                   {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
    "pre_tokenizer": null,
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}]},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
  })");
  tj["model"]["vocab"] = vocab;
  tj["added_tokens"] = added;
  json cfg = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"clean_up_tokenization_spaces", false}};
  return Tokenizer::from_json(tj, cfg, "tiny");
}

bool valid_utf8(const std::string& s) { return utf8_sanitize(s) == s; }

}  // namespace

TEST(Utf8, SanitizeFollowsWhatwgMaximalSubparts) {
  EXPECT_EQ(utf8_sanitize("plain ascii, 中文, 😀"), "plain ascii, 中文, 😀");
  EXPECT_EQ(utf8_sanitize("a\xFF" "b"), "a\uFFFD" "b");
  EXPECT_EQ(utf8_sanitize("x\xE2\x82"), "x\uFFFD");           // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(utf8_sanitize("\xF0\x9F\x98" "A"), "\uFFFD" "A");  // truncated 4-byte sequence
  EXPECT_EQ(utf8_sanitize("\xC0\xAF"), "\uFFFD\uFFFD");        // overlong: each byte invalid
  EXPECT_EQ(utf8_sanitize("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
}

TEST(Utf8, JsTrimUsesJavaScriptWhitespace) {
  EXPECT_EQ(js_trim("\u00A0\t x y \u3000\uFEFF\n"), "x y");
  EXPECT_EQ(js_trim("\u0085x\u0085"), "\u0085x\u0085");  // NEL is not JS whitespace
  EXPECT_EQ(js_trim("  x  ", true, false), "x  ");
  EXPECT_EQ(js_trim("  x  ", false, true), "  x");
}

TEST(Bpe, MergesByRankThenLeftmost) {
  Tokenizer t = tiny_sp();
  // "▁abc": "▁ a" has rank 3, "a b" rank 0 -> ▁ ab c -> "ab c" (rank 2) -> ▁ abc.
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{11, 10}));
  // "▁bca": only "b c" applies -> ▁ bc a; leading "▁ b" has no merge.
  EXPECT_EQ(t.encode("bca"), (std::vector<int32_t>{11, 9, 5}));
  // Ties go left: "▁abab" -> ▁ ab ab (both "a b" merges), never "b a".
  EXPECT_EQ(t.encode("abab"), (std::vector<int32_t>{11, 8, 8}));
  // A space becomes ▁ and "▁ a" merges.
  EXPECT_EQ(t.encode("c a"), (std::vector<int32_t>{11, 7, 12}));
}

TEST(Bpe, ByteFallbackUnkFusionAndDecode) {
  Tokenizer t = tiny_sp();
  EXPECT_EQ(t.encode("\xC3\xA9"), (std::vector<int32_t>{11, 3, 4}));      // é -> <0xC3><0xA9>
  EXPECT_EQ(t.encode("\xC3\xBC\xC3\xBC" "a"), (std::vector<int32_t>{11, 0, 5}));  // üü -> one fused <unk>
  EXPECT_EQ(t.decode(std::vector<int32_t>{11, 3, 4, 12}), "\xC3\xA9 a");  // Strip removes the leading space
  EXPECT_EQ(t.decode(std::vector<int32_t>{3, 12}), "\uFFFD a");  // a byte run ending mid-character
  EXPECT_EQ(t.encode("ab", true), (std::vector<int32_t>{1, 11, 8}));  // TemplateProcessing adds <s>
  DecodeOptions skip;
  skip.skip_special = true;
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, 12, 2}, skip), "a");
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, 12, 2}), "<s> a</s>");
}

TEST(Bpe, AddedTokensSplitFirstAndHonourStrip) {
  json extra = json::array({{{"id", 13}, {"content", "<m>"}, {"special", false}, {"lstrip", true}, {"rstrip", true}},
                            {{"id", 14}, {"content", "<mm>"}, {"special", true}}});
  Tokenizer t = tiny_sp(extra);
  // lstrip/rstrip eat the spaces around <m>; "<mm>" wins over "<m>" only where it matches (longest).
  EXPECT_EQ(t.encode("a  <m>  a"), (std::vector<int32_t>{12, 13, 12}));
  EXPECT_EQ(t.encode("<mm>a"), (std::vector<int32_t>{14, 12}));
  EXPECT_EQ(t.encode("a<m"), (std::vector<int32_t>{12, 0}));  // no added token; "<m" -> one fused <unk>
  EXPECT_TRUE(t.is_special(14));
  EXPECT_FALSE(t.is_special(13));
  EXPECT_TRUE(t.is_added(13));
}

TEST(RealVocab, SpecialTokensAndAddSpecial) {
  const Tokenizer& q = vocab("qwen3");
  auto im_start = q.token_to_id("<|im_start|>"), im_end = q.token_to_id("<|im_end|>");
  ASSERT_TRUE(im_start && im_end);
  auto ids = q.encode("<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(ids.front(), *im_start);
  EXPECT_EQ(ids.back(), *im_end);
  auto partial = q.encode("<|im_start");  // not a special token: ordinary BPE pieces
  EXPECT_EQ(std::count(partial.begin(), partial.end(), *im_start), 0);
  EXPECT_EQ(q.encode("hi", true), q.encode("hi"));  // Qwen adds nothing
  EXPECT_EQ(q.eos_id(), im_end);

  const Tokenizer& l2 = vocab("llama2");
  auto with = l2.encode("hi", true), without = l2.encode("hi");
  ASSERT_EQ(with.size(), without.size() + 1);
  EXPECT_EQ(with[0], *l2.bos_id());
  EXPECT_EQ(l2.decode(with), "<s> hi");  // transformers.js keeps special tokens unless told
  DecodeOptions skip;
  skip.skip_special = true;
  EXPECT_EQ(l2.decode(with, skip), "hi");
}

TEST(RealVocab, RandomTextRoundTrips) {
  // Random mixes of ASCII, CJK, emoji, accents and whitespace decode back to themselves (NFC
  // text; clean-up off, since Llama-3's config turns " ." into ".").
  RngStream rng(Seed{42}, "tokenizer-test");
  const std::vector<std::string> atoms = {"a", "Z", " ", "  ", "\t", "\n", "\r\n", "中", "文", "😀", "👨‍👩‍👧", "é", "ß",
                                          "1", "23", "456", ".", "'s", "'LL", "\u3000", "\u00a0", "Ω", "<", "|", "€"};
  DecodeOptions raw;
  raw.cleanup = false;
  for (const char* name : {"qwen3", "llama3", "llama2"}) {
    const Tokenizer& t = vocab(name);
    for (int k = 0; k < 200; ++k) {
      std::string s;
      int n = 1 + int(rng.below(40));
      for (int i = 0; i < n; ++i) s += atoms[rng.below(atoms.size())];
      auto ids = t.encode(s);
      ASSERT_EQ(t.decode(ids, raw), s) << name;
    }
  }
}

TEST(IncrementalDecoder, SplitCharactersComeOutWhole) {
  const Tokenizer& l2 = vocab("llama2");
  const std::string rare = "\U00031350";  // CJK Extension H: not in the vocabulary, four <0xXX> tokens
  auto ids = l2.encode("x" + rare);
  ASSERT_GE(ids.size(), 5u);
  auto dec = l2.decoder();
  std::vector<std::string> parts;
  for (int32_t id : ids) parts.push_back(dec.push(id));
  parts.push_back(dec.finish());
  std::string all;
  for (const auto& p : parts) {
    EXPECT_TRUE(valid_utf8(p));
    all += p;
  }
  EXPECT_EQ(all, "x" + rare);
  EXPECT_EQ(parts[ids.size() - 4], "");  // first byte alone: nothing yet
  EXPECT_EQ(parts[ids.size() - 1], rare);

  for (const char* name : {"qwen3", "llama3"}) {
    const Tokenizer& t = vocab(name);
    std::string text = "Hello 世界! 😀👍🏽 ok.";
    auto tids = t.encode(text);
    auto d = t.decoder();
    std::string s;
    for (int32_t id : tids) {
      std::string p = d.push(id);
      EXPECT_TRUE(valid_utf8(p)) << name;
      s += p;
    }
    s += d.finish();
    EXPECT_EQ(s, t.decode(tids)) << name;
  }
}

TEST(IncrementalDecoder, CleanupMatchesFullDecode) {
  const Tokenizer& l3 = vocab("llama3");  // clean_up_tokenization_spaces: true
  std::vector<int32_t> ids;
  for (const char* piece : {"I", " do", " n't", " know", " .", " It", " 's", " fine", " ,", " ok", " ?", " ' ", "x"})
    for (int32_t id : l3.encode(piece)) ids.push_back(id);
  std::string full = l3.decode(ids);
  EXPECT_EQ(full, "I don't know. It's fine, ok?'x");
  auto d = l3.decoder();
  std::string s;
  for (int32_t id : ids) s += d.push(id);
  s += d.finish();
  EXPECT_EQ(s, full);
}

TEST(RealVocab, ConcurrentEncodeMatchesSerial) {
  // The proxy encodes on many threads with one Tokenizer: results must not depend on that.
  const Tokenizer& q = vocab("qwen3");
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i)
    texts.push_back("request " + std::to_string(i) + ": 你好 world, it's " + std::string(size_t(i % 7), ' ') + "😀 caf\u0065\u0301");
  std::vector<std::vector<int32_t>> serial;
  for (const auto& t : texts) serial.push_back(q.encode(t));
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) {
          size_t j = (i * 7 + size_t(k) * 13 + size_t(rep)) % texts.size();
          if (q.encode(texts[j]) != serial[j]) ++bad;
        }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(Errors, ClearMessages) {
  try {
    Tokenizer::load("/nonexistent/model");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model"), std::string::npos);
  }
  const Tokenizer& q = vocab("qwen3");
  EXPECT_THROW(q.decode(std::vector<int32_t>{int32_t(q.vocab_size()) + 5}), Error);
  EXPECT_THROW(Tokenizer::from_json(json{{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}}, json(), "x.json"), Error);
}

TEST(Cli, TokenizeAndDetokenize) {
  std::string dir = scratch_dir("tokenize-cli");
  std::string text = "Hello, 世界! 😀\n\tcode: int x = 42;";
  write_file_atomic(dir + "/in.txt", text, true);
  const Tokenizer& q = vocab("qwen3");
  std::string out;
  ASSERT_EQ(run_command(aloepri_exe() + " tokenize --tokenizer " + vocab_dir("qwen3") + " --file " + dir + "/in.txt --json", &out), 0);
  json j = json::parse(out);
  auto ids = j["ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(ids, q.encode(text));
  EXPECT_EQ(j["count"].get<size_t>(), ids.size());
  std::string csv;
  for (size_t i = 0; i < ids.size(); ++i) csv += (i ? "," : "") + std::to_string(ids[i]);
  out.clear();
  ASSERT_EQ(run_command(aloepri_exe() + " tokenize --tokenizer " + vocab_dir("qwen3") + "/tokenizer.json --file " + dir + "/in.txt", &out), 0);
  EXPECT_EQ(out, csv + "\n");
  out.clear();
  ASSERT_EQ(run_command(aloepri_exe() + " detokenize --tokenizer " + vocab_dir("qwen3") + " --ids " + csv + " --json", &out), 0);
  EXPECT_EQ(json::parse(out)["text"].get<std::string>(), text);
  EXPECT_EQ(run_command(aloepri_exe() + " detokenize --tokenizer " + vocab_dir("qwen3") + " --ids 1,x,2 2>/dev/null"), kExitUsage);
  EXPECT_EQ(run_command(aloepri_exe() + " tokenize --tokenizer /nonexistent --text hi 2>/dev/null"), kExitBadInput);
}
