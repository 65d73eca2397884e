// Id-for-id parity with transformers.js on >= 6 MB of mixed real text per vocabulary.
// The corpus (tools/corpus/parity/make_corpus.mjs) and the reference ids
// (tools/corpus/parity/reference_ids.mjs, ~20-40 s per vocabulary) are generated on first use and
// cached in <build>/tokenizer-parity/; delete that directory to regenerate.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "aloepri/core/output.h"
#include "aloepri/client/tokenizer.h"
#include "support/paths.h"

namespace fs = std::filesystem;
using namespace aloepri;
using aloepri::testing::binary_dir;
using aloepri::testing::run_command;
using aloepri::testing::source_dir;
using aloepri::testing::vocab_dir;
using nlohmann::json;

namespace {

// Bump when the corpus recipe or the reference script changes.
const std::string kCacheVersion = "v2";

std::string cache_dir() {
  std::string d = binary_dir() + "/tokenizer-parity-" + kCacheVersion;
  fs::create_directories(d);
  return d;
}

std::string corpus_path() {
  std::string p = cache_dir() + "/corpus.bin";
  if (!fs::exists(p)) {
    std::string out;
    int rc = run_command("cd '" + source_dir() + "' && node tools/corpus/parity/make_corpus.mjs '" + p + "'", &out, true);
    if (rc != 0) throw std::runtime_error("make_corpus.mjs failed:\n" + out);
  }
  return p;
}

std::string reference_path(const std::string& vocab, size_t max_docs) {
  std::string p = cache_dir() + "/ref-" + vocab + "-" + std::to_string(max_docs) + ".bin";
  if (!fs::exists(p)) {
    std::string corpus = corpus_path(), out;
    int rc = run_command("cd '" + source_dir() + "' && node tools/corpus/parity/reference_ids.mjs '" + corpus + "' " +
                             vocab + " '" + p + "' " + std::to_string(max_docs), &out, true);
    if (rc != 0) throw std::runtime_error("reference_ids.mjs failed:\n" + out);
    std::cerr << out;
  }
  return p;
}

struct Reader {
  std::string data;
  size_t off = 0;
  uint32_t u32() {
    if (off + 4 > data.size()) throw std::runtime_error("truncated file");
    uint32_t v;
    std::memcpy(&v, data.data() + off, 4);
    off += 4;
    return v;
  }
  std::string bytes(size_t n) {
    if (off + n > data.size()) throw std::runtime_error("truncated file");
    std::string s = data.substr(off, n);
    off += n;
    return s;
  }
};

std::vector<std::string> load_corpus() {
  Reader r{read_file(corpus_path())};
  if (r.bytes(8) != "ALOECRP1") throw std::runtime_error("bad corpus file");
  std::vector<std::string> docs(r.u32());
  for (auto& d : docs) d = r.bytes(r.u32());
  return docs;
}

struct RefDoc {
  std::vector<int32_t> ids;
  bool round_trips;
  std::string decoded;  // when !round_trips
};

std::vector<RefDoc> load_reference(const std::string& vocab, size_t max_docs) {
  Reader r{read_file(reference_path(vocab, max_docs))};
  if (r.bytes(8) != "ALOEREF1") throw std::runtime_error("bad reference file");
  std::vector<RefDoc> docs(r.u32());
  for (auto& d : docs) {
    d.ids.resize(r.u32());
    std::string raw = r.bytes(d.ids.size() * 4);
    std::memcpy(d.ids.data(), raw.data(), raw.size());
    d.round_trips = r.bytes(1)[0] != 0;
    if (!d.round_trips) d.decoded = r.bytes(r.u32());
  }
  return docs;
}

std::string escape(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n') o += "\\n";
    else if (c == '\r') o += "\\r";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20) o += "\\x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15];
    else o += char(c);
  }
  return o;
}

// First mismatch with the surrounding tokens, as text, so a failure says what went wrong.
std::string describe_mismatch(const Tokenizer& tok, const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto window = [&](const std::vector<int32_t>& v) {
    std::ostringstream o;
    for (size_t k = i >= 3 ? i - 3 : 0; k < std::min(v.size(), i + 4); ++k)
      o << (k == i ? " >>" : " ") << v[k] << "'" << escape(tok.id_to_token(v[k])) << "'";
    return o.str();
  };
  std::ostringstream o;
  o << "first difference at token " << i << " (ours " << got.size() << " tokens, reference " << want.size() << ")\n"
    << "  ours:     " << window(got) << "\n  expected: " << window(want) << "\n";
  std::vector<int32_t> prefix(want.begin(), want.begin() + std::min(i, want.size()));
  std::string before = tok.decode(prefix, DecodeOptions{false, false});
  o << "  text before: ..." << escape(before.substr(before.size() > 60 ? before.size() - 60 : 0));
  return o.str();
}

// The llama2 variants of tools/corpus/parity/reference_ids.mjs: same files, other code paths.
Tokenizer load_variant(const std::string& vocab) {
  if (vocab.find('-') == std::string::npos) return Tokenizer::load(vocab_dir(vocab));
  std::string dir = vocab_dir(vocab.substr(0, vocab.find('-')));
  json tj = json::parse(read_file(dir + "/tokenizer.json"));
  json cfg = json::parse(read_file(dir + "/tokenizer_config.json"));
  if (vocab == "llama2-nonlegacy") {
    cfg["legacy"] = false;
  } else if (vocab == "llama2-metaspace") {
    json ms = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"add_prefix_space", true},
               {"prepend_scheme", "always"}, {"split", false}};
    tj["normalizer"] = nullptr;
    tj["pre_tokenizer"] = ms;
    tj["decoder"] = ms;
  } else if (vocab == "llama3-gpt2") {
    tj["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    throw std::runtime_error("unknown variant " + vocab);
  }
  return Tokenizer::from_json(tj, cfg, dir + " (" + vocab + ")");
}

void check_vocab(const std::string& vocab, size_t max_docs = 1u << 30) {
  auto docs = load_corpus();
  const bool full = max_docs >= docs.size();
  if (!full) docs.resize(max_docs);
  auto ref = load_reference(vocab, std::min(max_docs, docs.size()));
  ASSERT_EQ(docs.size(), ref.size()) << "corpus and reference disagree; delete " << cache_dir();
  Tokenizer tok = load_variant(vocab);
  size_t bytes = 0, tokens = 0, enc_fail = 0, dec_fail = 0, stream_fail = 0, rt = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    bytes += docs[d].size();
    std::vector<int32_t> ids = tok.encode(docs[d]);
    tokens += ids.size();
    if (ids != ref[d].ids) {
      if (enc_fail++ < 3) ADD_FAILURE() << vocab << " document " << d << ": " << describe_mismatch(tok, ids, ref[d].ids);
      continue;
    }
    // Decode must give the document back where transformers.js does, and otherwise its text.
    std::string text = tok.decode(ids);
    const std::string& want = ref[d].round_trips ? docs[d] : ref[d].decoded;
    rt += ref[d].round_trips;
    if (text != want) {
      size_t k = 0;
      while (k < text.size() && k < want.size() && text[k] == want[k]) ++k;
      if (dec_fail++ < 3)
        ADD_FAILURE() << vocab << " document " << d << ": decode differs at byte " << k << ": ours '"
                      << escape(text.substr(k > 20 ? k - 20 : 0, 60)) << "' expected '" << escape(want.substr(k > 20 ? k - 20 : 0, 60)) << "'";
    }
    // Streaming decode, one id at a time, gives the same text (every 4th document, for time).
    if (d % 4 == 0) {
      auto inc = tok.decoder();
      std::string s;
      for (int32_t id : ids) s += inc.push(id);
      s += inc.finish();
      if (s != text && stream_fail++ < 3) ADD_FAILURE() << vocab << " document " << d << ": streaming decode differs from decode";
    }
  }
  EXPECT_EQ(enc_fail, 0u) << vocab << ": documents whose ids differ from transformers.js";
  EXPECT_EQ(dec_fail, 0u);
  EXPECT_EQ(stream_fail, 0u);
  if (full) EXPECT_GE(bytes, size_t(5) << 20) << "parity corpus must be >= 5 MB";
  std::cerr << "[parity] " << vocab << ": " << docs.size() << " documents, " << bytes / 1e6 << " MB, " << tokens
            << " tokens, " << rt << " round-trip in transformers.js; mismatches: encode " << enc_fail << ", decode "
            << dec_fail << ", stream " << stream_fail << "\n";
}

}  // namespace

TEST(TokenizerParity, Qwen3) { check_vocab("qwen3"); }
TEST(TokenizerParity, Llama3) { check_vocab("llama3"); }
TEST(TokenizerParity, Llama2) { check_vocab("llama2"); }
// Variants on the first 300 documents (~1.4 MB; transformers.js is slow on whole-document BPE).
TEST(TokenizerParity, Llama2NonLegacy) { check_vocab("llama2-nonlegacy", 300); }
TEST(TokenizerParity, Llama2Metaspace) { check_vocab("llama2-metaspace", 300); }
TEST(TokenizerParity, Llama3Gpt2ByteLevel) { check_vocab("llama3-gpt2", 300); }
