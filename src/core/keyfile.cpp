#include "aloepri/core/keyfile.h"

#include <sodium.h>
#include <sys/stat.h>

#include <ctime>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"

namespace aloepri {

static const char* kFormatTag = "aloepri-key";

static std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

KeyFile KeyFile::generate() {
  KeyFile k;
  k.seed = random_seed();
  k.created = now_utc();
  return k;
}

KeyFile KeyFile::load(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path, "key file not found", kExitKeyMismatch);
  if (st.st_mode & 077)
    throw Error(path, "key file is accessible by group or others (mode " +
                          std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                          std::to_string(st.st_mode & 7) + "); run: chmod 600 " + path,
                kExitKeyMismatch);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception&) {
    throw Error(path, "not an aloepri key file (invalid JSON)", kExitKeyMismatch);
  }
  if (!j.is_object() || j.value("format", "") != kFormatTag)
    throw Error(path, "not an aloepri key file (missing format tag)", kExitKeyMismatch);
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"] < 1 || j["version"] > kKeyFileVersion)
    throw Error(path, "unsupported key file version " + (j.contains("version") ? j["version"].dump() : "(none)") +
                          " (this build reads version " + std::to_string(kKeyFileVersion) + ")",
                kExitKeyMismatch);
  KeyFile k;
  std::string hex = j.value("seed", "");
  size_t bin_len = 0;
  if (hex.size() != 64 ||
      sodium_hex2bin(k.seed.data(), k.seed.size(), hex.data(), hex.size(), nullptr, &bin_len, nullptr) != 0 ||
      bin_len != 32)
    throw Error(path, "field 'seed' must be 64 hex digits", kExitKeyMismatch);
  sodium_memzero(hex.data(), hex.size());
  k.created = j.value("created", "");
  if (j.contains("obfuscation") && !j["obfuscation"].is_null()) {
    const auto& o = j["obfuscation"];
    ObfuscationRecord r;
    try {
      r.plain_fingerprint = o.at("plain_fingerprint").get<std::string>();
      r.obf_fingerprint = o.at("obf_fingerprint").get<std::string>();
      r.vocab_size = o.at("vocab_size").get<int64_t>();
      r.params = o.value("params", nlohmann::json::object());
      r.extra = o.value("extra", nlohmann::json::object());
    } catch (const nlohmann::json::exception& e) {
      throw Error(path, std::string("bad 'obfuscation' record: ") + e.what(), kExitKeyMismatch);
    }
    if (r.vocab_size <= 0) throw Error(path, "bad 'obfuscation.vocab_size'", kExitKeyMismatch);
    if (o.contains("homophones") && !o["homophones"].is_null())
      r.copies = copies_from_json(o["homophones"], r.vocab_size, path + ": obfuscation.homophones");
    k.record = r;
  }
  return k;
}

void KeyFile::save(const std::string& path, bool overwrite) const {
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, seed.data(), seed.size());
  const bool homophonic = record && !record->copies.empty();
  nlohmann::json j = {{"format", kFormatTag}, {"version", homophonic ? kKeyFileVersion : 1}, {"created", created},
                      {"seed", std::string(hex)}};
  sodium_memzero(hex, sizeof hex);
  if (record)
    j["obfuscation"] = {{"plain_fingerprint", record->plain_fingerprint},
                        {"obf_fingerprint", record->obf_fingerprint},
                        {"vocab_size", record->vocab_size},
                        {"params", record->params},
                        {"extra", record->extra}};
  if (homophonic) j["obfuscation"]["homophones"] = copies_to_json(record->copies);
  std::string text = j.dump(2) + "\n";
  write_file_atomic(path, text, overwrite, 0600);
  sodium_memzero(text.data(), text.size());
}

const ObfuscationRecord& KeyFile::require_record(const std::string& path) const {
  if (!record)
    throw Error(path, "this key has not obfuscated a model yet (run `aloepri obfuscate MODEL --key " + path + " ...`)",
                kExitKeyMismatch);
  return *record;
}

int64_t ObfuscationRecord::obf_vocab_size() const {
  int64_t np = 0;
  for (int64_t k : copies) np += k;
  return copies.empty() ? vocab_size : np;
}

VocabMap ObfuscationRecord::vocab_map(const Seed& seed) const { return VocabMap(seed, vocab_size, copies); }

std::vector<int64_t> derive_tau(const Seed& seed, int64_t n) { return RngStream(seed, "tau").permutation(n); }

std::vector<int64_t> invert_permutation(const std::vector<int64_t>& p) {
  std::vector<int64_t> inv(p.size(), -1);
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] < 0 || size_t(p[i]) >= p.size() || inv[size_t(p[i])] != -1)
      throw Error("", "not a permutation", kExitError);
    inv[size_t(p[i])] = int64_t(i);
  }
  return inv;
}

void check_key_matches_model(const KeyFile& key, const std::string& key_path, const std::string& fingerprint,
                             const std::string& model_path) {
  const auto& r = key.require_record(key_path);
  if (fingerprint != r.plain_fingerprint && fingerprint != r.obf_fingerprint)
    throw Error(key_path, "this key was not made for " + model_path + " (model fingerprint " +
                              fingerprint.substr(0, 16) + "... matches neither the plaintext " +
                              r.plain_fingerprint.substr(0, 16) + "... nor the obfuscated " +
                              r.obf_fingerprint.substr(0, 16) + "... model recorded in the key)",
                kExitKeyMismatch);
}

}  // namespace aloepri
