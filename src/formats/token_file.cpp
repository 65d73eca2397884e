#include "aloepri/formats/token_file.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"

namespace aloepri {

std::vector<uint16_t> read_token_file(const std::string& path, size_t max_tokens) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path, "cannot open token file (build it with tools/corpus)");
  f.seekg(0, std::ios::end);
  const auto bytes = static_cast<size_t>(f.tellg());
  if (bytes == 0 || bytes % 2 != 0)
    throw Error(path, "not a uint16 token file (" + std::to_string(bytes) + " bytes: empty or odd)");
  size_t n = bytes / 2;
  if (max_tokens > 0) n = std::min(n, max_tokens);
  std::vector<uint8_t> raw(2 * n);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (!f) throw Error(path, "short read");
  // Decoded byte by byte so the format stays little-endian whatever the host is.
  std::vector<uint16_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = uint16_t(raw[2 * i] | (raw[2 * i + 1] << 8));
  return ids;
}

}  // namespace aloepri

namespace aloepri {

std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& where, size_t max_tokens) {
  std::vector<int32_t> ids;
  size_t i = 0;
  const char* sep = ", \t\r\n";
  while (max_tokens == 0 || ids.size() < max_tokens) {
    i = text.find_first_not_of(sep, i);
    if (i == std::string::npos) break;
    size_t j = text.find_first_of(sep, i);
    if (j == std::string::npos) j = text.size();
    const std::string tok = text.substr(i, j - i);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size() || v < 0 || v > INT32_MAX) throw Error(where, "not a token id: '" + tok + "'", kExitUsage);
    ids.push_back(int32_t(v));
    i = j;
  }
  return ids;
}

std::vector<int32_t> read_token_ids(const std::string& path, size_t max_tokens) {
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0) {
    const auto raw = read_token_file(path, max_tokens);
    return std::vector<int32_t>(raw.begin(), raw.end());
  }
  return parse_token_ids(read_file(path), path, max_tokens);
}

std::vector<std::vector<int32_t>> split_documents(const std::vector<uint16_t>& ids, const DocumentIds& special) {
  std::vector<std::vector<int32_t>> docs;
  std::vector<int32_t> cur;
  for (const uint16_t u : ids) {
    const int32_t id = u;
    if (special.bos && id == *special.bos && !cur.empty()) docs.push_back(std::move(cur)), cur.clear();
    if (!(special.eos && id == *special.eos)) cur.push_back(id);
  }
  if (!cur.empty()) docs.push_back(std::move(cur));
  return docs;
}

std::vector<double> read_unigram_counts(const std::string& path, int64_t n) {
  require(n > 0, path, "empty vocabulary");
  std::vector<double> c(static_cast<size_t>(n), 0.0);
  if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".bin") == 0) {
    const auto ids = read_token_file(path);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (int64_t(ids[i]) >= n)
        throw Error(path, "token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                              " is outside the model's vocabulary of " + std::to_string(n) +
                              " (a token file of another tokenizer?)");
      c[ids[i]] += 1;
    }
    return c;
  }
  std::ifstream f(path);
  if (!f) throw Error(path, "cannot open counts file");
  std::string tok;
  int64_t i = 0;
  char ch;
  auto flush = [&]() {
    if (tok.empty()) return;
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size() || !(v >= 0) || !std::isfinite(v))
      throw Error(path, "entry " + std::to_string(i) + " ('" + tok + "') is not a non-negative number");
    if (i >= n) throw Error(path, "more than " + std::to_string(n) + " counts (the model's vocab_size)");
    c[size_t(i++)] = v;
    tok.clear();
  };
  while (f.get(ch)) {
    if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t' || ch == ',') flush();
    else tok.push_back(ch);
  }
  flush();
  if (i != n)
    throw Error(path, "holds " + std::to_string(i) + " counts, the model's vocab_size is " + std::to_string(n) +
                          " (one count per token id, or a *.bin token file)");
  return c;
}

}  // namespace aloepri
