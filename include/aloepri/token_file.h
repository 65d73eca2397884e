#pragma once
// The corpus token format written by tools/corpus (build/corpus/{train,heldout}.bin): token ids as
// little-endian uint16, nothing else (no header; every vocabulary we train on has < 65,536 ids).
// One reader for the trainer, the learned attacks and the audit.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace aloepri {

// Reads up to max_tokens ids (0 = all). Throws Error naming the file when it cannot be opened,
// is empty or has an odd number of bytes.
std::vector<uint16_t> read_token_file(const std::string& path, size_t max_tokens = 0);

// Unigram counts over [0, n) (for `obfuscate --homophone-counts FILE`): a *.bin token file as
// above, or text holding exactly n non-negative numbers (whitespace / comma separated). Errors
// name the file (an id >= n, a wrong count of numbers, a negative or unparsable number).
std::vector<double> read_unigram_counts(const std::string& path, int64_t n);

}  // namespace aloepri
