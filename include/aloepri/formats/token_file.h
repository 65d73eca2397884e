#pragma once
// Token-id files, the one reader for every consumer (trainer, learned attacks, audit, eval,
// obfuscate's calibration ids):
//  * the corpus format written by tools/corpus (build/corpus/{train,heldout}.bin): token ids as
//    little-endian uint16, nothing else (no header; every vocabulary we train on has < 65,536
//    ids). Documents are delimited by the model's BOS/EOS ids (split_documents);
//  * text: ids separated by commas and/or white space ("1, 2 3\n4").

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace aloepri {

// Reads up to max_tokens ids (0 = all). Throws Error naming the file when it cannot be opened,
// is empty or has an odd number of bytes.
std::vector<uint16_t> read_token_file(const std::string& path, size_t max_tokens = 0);

// Ids written as text, separated by commas and/or white space. Throws Error naming `where` and
// the offending entry for anything that is not a non-negative integer.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& where, size_t max_tokens = 0);

// Either format by name: PATH.bin is the corpus format, anything else text ids. Up to
// max_tokens ids (0 = all).
std::vector<int32_t> read_token_ids(const std::string& path, size_t max_tokens = 0);

// The special ids that delimit documents in a corpus stream; they come from the model (its
// config or tokenizer), never assumed.
struct DocumentIds {
  std::optional<int32_t> bos, eos;
};

// A corpus stream cut into documents as a client would send them: BOS starts a new document (and
// stays in it); EOS closes one in these files, but a client sends BOS + text only, so it is
// dropped. No BOS: one document. Empty documents are left out.
std::vector<std::vector<int32_t>> split_documents(const std::vector<uint16_t>& ids, const DocumentIds& special);

// Unigram counts over [0, n) (for `obfuscate --homophone-counts FILE`): a *.bin token file as
// above, or text holding exactly n non-negative numbers (whitespace / comma separated). Errors
// name the file (an id >= n, a wrong count of numbers, a negative or unparsable number).
std::vector<double> read_unigram_counts(const std::string& path, int64_t n);

}  // namespace aloepri
