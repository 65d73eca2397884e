// Traffic files and plaintext corpora for the token-stream attacks (audit/stream_attacks.h).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/homophones.h"
#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "aloepri/client/tokenizer.h"

namespace aloepri::audit {

std::vector<TokenSeq> read_traffic(const std::string& path, int32_t vocab) {
  std::ifstream in(path);
  if (!in) throw Error(path, "cannot read the traffic file", kExitError);
  std::vector<TokenSeq> out;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw Error(path + ":" + std::to_string(lineno), std::string("not JSON: ") + e.what());
    }
    if (!j.is_array())
      throw Error(path + ":" + std::to_string(lineno), "expected a JSON array of token ids per line");
    TokenSeq s;
    s.reserve(j.size());
    for (const auto& v : j) {
      if (!v.is_number_integer())
        throw Error(path + ":" + std::to_string(lineno), "token ids must be integers");
      int64_t id = v.get<int64_t>();
      if (id < 0 || (vocab > 0 && id >= vocab))
        throw Error(path + ":" + std::to_string(lineno),
                    "token id " + std::to_string(id) + " outside the vocabulary (size " + std::to_string(vocab) + ")");
      s.push_back(int32_t(id));
    }
    out.push_back(std::move(s));
  }
  return out;
}

void write_traffic(const std::string& path, const std::vector<TokenSeq>& seqs, bool overwrite) {
  std::string data;
  for (const auto& s : seqs) {
    data += '[';
    for (size_t i = 0; i < s.size(); ++i) {
      if (i) data += ',';
      data += std::to_string(s[i]);
    }
    data += "]\n";
  }
  write_file_atomic(path, data, overwrite);
}

namespace {
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

DocumentIds document_ids(const ModelConfig& c) {
  DocumentIds d;
  if (c.bos_token_id) d.bos = int32_t(*c.bos_token_id);
  if (c.eos_token_id) d.eos = int32_t(*c.eos_token_id);
  return d;
}

DocumentIds document_ids(const Tokenizer& tok) { return {tok.bos_id(), tok.eos_id()}; }

std::vector<TokenSeq> load_token_docs(const std::string& path, const Tokenizer* tok, const DocumentIds& special,
                                      int64_t max_tokens, std::vector<std::string>* sources) {
  std::vector<TokenSeq> docs;
  int64_t total = 0;
  std::string source;
  if (sources) sources->clear();
  auto add = [&](TokenSeq d) {
    if (d.empty()) return true;
    if (max_tokens > 0 && total + int64_t(d.size()) > max_tokens) d.resize(size_t(max_tokens - total));
    total += int64_t(d.size());
    if (!d.empty()) {
      docs.push_back(std::move(d));
      if (sources) sources->push_back(source);
    }
    return max_tokens <= 0 || total < max_tokens;
  };
  if (ends_with(path, ".bin")) {
    // EOS dropped by split_documents, so that a prior's frequency ranks line up with the traffic's
    for (auto& d : split_documents(read_token_file(path), special))
      if (!add(std::move(d))) break;
    return docs;
  }
  if (!tok) throw Error(path, "a tokenizer is needed to read text corpora", kExitError);
  std::ifstream in(path);
  if (!in) throw Error(path, "cannot read the corpus", kExitError);
  const bool jsonl = ends_with(path, ".jsonl");
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    std::string text;
    if (jsonl) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        auto j = nlohmann::json::parse(line);
        text = j.at("text").get<std::string>();
        source = j.contains("source") ? j["source"].get<std::string>()
                 : j.contains("group") ? j["group"].get<std::string>() : std::string();
      } catch (const std::exception& e) {
        throw Error(path + ":" + std::to_string(lineno), std::string("expected {\"text\": ...}: ") + e.what());
      }
    } else {
      text = line;
    }
    if (text.empty()) continue;
    if (!add(tok->encode(text, /*add_special=*/true))) break;
  }
  return docs;
}

std::vector<double> balance_sources(const std::vector<TokenSeq>& docs, const std::vector<std::string>& sources) {
  if (sources.size() != docs.size()) throw Error("prior", "one source per document expected", kExitError);
  std::map<std::string, double> tokens;
  for (size_t i = 0; i < docs.size(); ++i) tokens[sources[i]] += double(docs[i].size());
  double total = 0;
  for (auto& [k, v] : tokens) total += v;
  std::vector<double> w(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) w[i] = total / (double(tokens.size()) * tokens[sources[i]]);
  return w;
}

std::vector<TokenSeq> take_tokens(const std::vector<TokenSeq>& docs, int64_t n) {
  std::vector<TokenSeq> out;
  int64_t total = 0;
  for (const auto& d : docs) {
    if (total >= n) break;
    TokenSeq s = d;
    if (total + int64_t(s.size()) > n) s.resize(size_t(n - total));
    total += int64_t(s.size());
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace aloepri::audit

namespace aloepri::audit {

Homophones make_homophones(const std::vector<double>& freq, int64_t extra) {
  const int64_t V = int64_t(freq.size());
  require(V > 0, "homophones", "empty frequency table");
  require(extra >= 0, "--homophones", "must be >= 0", kExitUsage);
  // The obfuscator's allocation (homophones.h), with the simulation's sqrt rule.
  const std::vector<int64_t> copies = allocate_copies(freq, extra, CopyRule::Sqrt);
  Homophones h;
  h.first.resize(size_t(V + 1));
  for (int64_t t = 0; t < V; ++t) {
    h.first[size_t(t + 1)] = int32_t(h.first[size_t(t)] + copies[size_t(t)]);
    for (int64_t c = 0; c < copies[size_t(t)]; ++c) h.base.push_back(int32_t(t));
  }
  return h;
}

std::vector<TokenSeq> homophonic_encode(const std::vector<TokenSeq>& docs, const Homophones& h, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<TokenSeq> out = docs;
  for (auto& d : out)
    for (auto& t : d) {
      require(t >= 0 && size_t(t) + 1 < h.first.size(), "homophones", "token id " + std::to_string(t) + " outside the table");
      const uint64_t c = uint64_t(h.copies(t));
      t = h.first[size_t(t)] + int32_t(c > 1 ? rng() % c : 0);
    }
  return out;
}

}  // namespace aloepri::audit
