// The client's secret: a versioned key file holding a 256-bit master seed (mode 0600, never
// printed) and, once a model has been obfuscated with it, a record of what was done (parameters,
// plaintext and obfuscated fingerprints, vocabulary size, EOS ids). Everything random in an
// obfuscation is re-derived from the seed (rng.h), so nothing big is stored.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/core/homophones.h"
#include "aloepri/core/rng.h"

namespace aloepri {

// Version 2 adds the homophone record; a key without homophones is still written as version 1
// (older builds read it), a homophonic one as 2 (older builds refuse it rather than map ids
// through a tau of the wrong size).
constexpr int kKeyFileVersion = 2;

// What `aloepri obfuscate` records in the key after a successful run.
struct ObfuscationRecord {
  std::string plain_fingerprint;  // HFModel::fingerprint() of the plaintext model
  std::string obf_fingerprint;    // ... of the obfuscated model
  int64_t vocab_size = 0;         // n: tau is a permutation of [0, n)
  nlohmann::json params;          // lambda, h, alpha_e, ... as used
  nlohmann::json extra;           // anything else the client needs online (e.g. eos ids)
  // Homophonic vocabulary (homophones.h): copies per plaintext id, [n]; empty = none (n' = n).
  // Stored as "homophones": {"extra", "ids": [[t, c_t], ...]} (only ids with c_t > 1).
  std::vector<int64_t> copies;
  int64_t obf_vocab_size() const;            // n'
  VocabMap vocab_map(const Seed& seed) const;  // tau, or the homophonic map
};

struct KeyFile {
  Seed seed{};
  std::optional<ObfuscationRecord> record;
  std::string created;  // ISO-8601 UTC

  static KeyFile generate();  // seed from the OS CSPRNG
  // Reads and validates: format tag, version, seed length, and permissions (the file must not be
  // readable by group or others). Errors name the file, never the seed.
  static KeyFile load(const std::string& path);
  // Writes atomically with mode 0600. Refuses an existing path unless overwrite.
  void save(const std::string& path, bool overwrite = false) const;
  // The record, or an Error explaining that this key has not obfuscated a model yet.
  const ObfuscationRecord& require_record(const std::string& path) const;
};

// tau as a vector: tau[plain_id] = obfuscated_id (a uniform permutation of [0, n) from the
// stream "tau"), and its inverse.
std::vector<int64_t> derive_tau(const Seed& seed, int64_t n);
std::vector<int64_t> invert_permutation(const std::vector<int64_t>& p);

// Check that `fingerprint` is the plaintext or the obfuscated model this key was made for.
void check_key_matches_model(const KeyFile& key, const std::string& key_path,
                             const std::string& fingerprint, const std::string& model_path);

}  // namespace aloepri
