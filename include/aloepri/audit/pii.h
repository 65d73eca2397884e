// Personally identifiable information (PII) in victim text, marked by rules, so that an attack's
// PII recovery ratio = the fraction of PII tokens it recovers (issue 5, method.md section 9).
//
// Rules (documented in docs/RESULTS.md "Token-stream attacks"):
//  - EMAIL    local@domain.tld
//  - PHONE    North-American numbers ((201) 555-0123, 201-555-0123, +1 201 555 0123) and
//             international numbers starting with '+' with at least 9 digits
//  - ADDRESS  "<number> <Capitalised words> <Street|Avenue|Road|...>[, City, ST 12345]"
//  - NAME     a listed first name followed by a capitalised surname ("Germain Tara"), and the
//             display name of a From: / To: / Cc: header line ("Kiall Mac Innes" <kiall@...>)
// The first-name list comes from the npm name lists (tools/corpus/pii.mjs writes names.txt).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace aloepri {
class Tokenizer;
}

namespace aloepri::audit {

enum class PiiKind { Email, Phone, Address, Name };
const char* pii_kind_name(PiiKind k);  // "email", "phone", "address", "name"

struct PiiSpan {
  size_t begin = 0, end = 0;  // byte offsets into the text, [begin, end)
  PiiKind kind = PiiKind::Name;
};

class PiiRules {
 public:
  // first_names: capitalised first names ("Abigail"); the NAME rule needs them.
  explicit PiiRules(std::vector<std::string> first_names);
  // One name per line (tools/corpus/pii.mjs names.txt). Throws Error naming the file.
  static PiiRules load(const std::string& names_file);
  ~PiiRules();
  PiiRules(PiiRules&&) noexcept;
  PiiRules& operator=(PiiRules&&) noexcept;

  // Every PII item in `text`, sorted by begin, overlapping items merged (the earlier kind wins).
  std::vector<PiiSpan> find(std::string_view text) const;
  size_t name_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// PII at token level: decodes `ids` (special tokens skipped, no clean-up) keeping each token's
// byte range in the decoded text, finds the PII spans there and marks every token whose range
// overlaps a span (a token that decodes to nothing, e.g. the first bytes of a multi-byte
// character, is marked when its position lies inside a span).
struct PiiTokens {
  std::string text;              // the decoded text
  std::vector<PiiSpan> spans;    // PII found in it
  std::vector<uint8_t> mask;     // per token: 1 = part of a PII item
  std::vector<uint8_t> kind;     // per token: PiiKind + 1 where mask (0 elsewhere)
  std::vector<int32_t> item;     // per token: index into spans + 1 where mask (0 elsewhere)
};
PiiTokens mark_pii_tokens(const Tokenizer& tok, std::span<const int32_t> ids, const PiiRules& rules);

}  // namespace aloepri::audit
