#include "aloepri/token_file.h"

#include <algorithm>
#include <fstream>

#include "aloepri/error.h"

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
