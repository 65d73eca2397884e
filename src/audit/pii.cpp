// PII rules (audit/pii.h): regular expressions (PCRE2) for e-mail addresses, phone numbers and
// postal addresses, a first-name list for person names, and the mapping to tokens.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <fstream>
#include <unordered_set>

#include "aloepri/audit/pii.h"
#include "aloepri/core/error.h"
#include "aloepri/client/tokenizer.h"

namespace aloepri::audit {

namespace {

// A compiled pattern; match_all returns the [begin, end) of capture group `group` (0 = whole).
class Regex {
 public:
  Regex(const char* pattern, uint32_t flags) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, flags, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      throw Error("pii rules", std::string("bad pattern: ") + reinterpret_cast<char*>(buf), kExitError);
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter works too
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  template <class F>
  void match_all(std::string_view text, int group, F&& on_match) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0;
    while (pos <= text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, md, nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t b = ov[2 * group], e = ov[2 * group + 1];
      if (b != PCRE2_UNSET && e > b) on_match(b, e);
      pos = std::max<size_t>(ov[1], ov[0] + 1);
    }
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
bool is_alpha(char c) { return is_upper(c) || is_lower(c); }

}  // namespace

const char* pii_kind_name(PiiKind k) {
  switch (k) {
    case PiiKind::Email: return "email";
    case PiiKind::Phone: return "phone";
    case PiiKind::Address: return "address";
    case PiiKind::Name: return "name";
  }
  return "?";
}

struct PiiRules::Impl {
  std::unordered_set<std::string> names;
  Regex email{R"re([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})re", 0};
  Regex phone_na{R"re((?<![\w.+-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[.-])\d{3}[ .-]\d{4}(?![\w-]))re", 0};
  Regex phone_intl{R"re((?<![\w.+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w]))re", 0};
  Regex address{
      R"re(\b\d{1,5}[ \t]+(?:[A-Z][A-Za-z'-]+[ \t]+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|)re"
      R"re(Court|Ct|Place|Pl|Boulevard|Blvd|Way|Square|Sq|Terrace|Parkway)\b\.?)re"
      R"re((?:,?[ \t]*(?:Apt|Suite|Unit)\.?[ \t]*\w+)?)re"
      R"re((?:,[ \t]*[A-Z][A-Za-z]+(?:[ \t]+[A-Z][A-Za-z]+)*,[ \t]*[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?)?)re",
      0};
  // Display name of an address header: From: "Name" <addr>  |  From: Name <addr>  |  addr (Name)
  Regex header_name{R"re(^(?:From|To|Cc):[ \t]*"?([^"<>\n,@()]*[A-Za-z][^"<>\n,@()]*?)"?[ \t]*<)re",
                    PCRE2_MULTILINE};
  Regex header_paren{R"re(^(?:From|To|Cc):[^\n]*?@[^\n(]*\(([^()\n@]*[A-Za-z][^()\n@]*)\))re", PCRE2_MULTILINE};
};

PiiRules::PiiRules(std::vector<std::string> first_names) : impl_(std::make_unique<Impl>()) {
  for (auto& n : first_names)
    if (!n.empty()) impl_->names.insert(std::move(n));
}
PiiRules::~PiiRules() = default;
PiiRules::PiiRules(PiiRules&&) noexcept = default;
PiiRules& PiiRules::operator=(PiiRules&&) noexcept = default;
size_t PiiRules::name_count() const { return impl_->names.size(); }

PiiRules PiiRules::load(const std::string& names_file) {
  std::ifstream in(names_file);
  if (!in) throw Error(names_file, "cannot read the first-name list (build it with node tools/corpus/pii.mjs)", kExitError);
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (names.empty()) throw Error(names_file, "the first-name list is empty");
  return PiiRules(std::move(names));
}

std::vector<PiiSpan> PiiRules::find(std::string_view text) const {
  std::vector<PiiSpan> raw;
  auto add = [&](PiiKind k) { return [&raw, k](size_t b, size_t e) { raw.push_back({b, e, k}); }; };
  impl_->email.match_all(text, 0, add(PiiKind::Email));
  impl_->phone_na.match_all(text, 0, add(PiiKind::Phone));
  impl_->phone_intl.match_all(text, 0, [&](size_t b, size_t e) {
    int digits = 0;
    for (size_t i = b; i < e; ++i) digits += text[i] >= '0' && text[i] <= '9';
    if (digits >= 9) raw.push_back({b, e, PiiKind::Phone});
  });
  impl_->address.match_all(text, 0, add(PiiKind::Address));
  auto trimmed = [&](size_t b, size_t e) {
    while (b < e && (text[b] == ' ' || text[b] == '\t')) ++b;
    while (e > b && (text[e - 1] == ' ' || text[e - 1] == '\t')) --e;
    if (e > b) raw.push_back({b, e, PiiKind::Name});
  };
  impl_->header_name.match_all(text, 1, trimmed);
  impl_->header_paren.match_all(text, 1, trimmed);
  // First name + capitalised surname, on one line ("Abigail Douglas", "Kiall Mac Innes" is found
  // by its header; here a single surname word).
  if (!impl_->names.empty()) {
    size_t i = 0;
    const size_t n = text.size();
    while (i < n) {
      if (!is_upper(text[i]) || (i > 0 && is_alpha(text[i - 1]))) { ++i; continue; }
      size_t j = i + 1;
      while (j < n && is_lower(text[j])) ++j;
      if (j == i + 1 || (j < n && is_alpha(text[j]))) { i = j; continue; }
      std::string word(text.substr(i, j - i));
      size_t k = j;
      if (impl_->names.count(word) && k < n && text[k] == ' ' && k + 1 < n && is_upper(text[k + 1])) {
        size_t e = k + 2;
        while (e < n && (is_lower(text[e]) || text[e] == '\'')) ++e;
        if (e > k + 2 && (e == n || !is_alpha(text[e]))) {
          raw.push_back({i, e, PiiKind::Name});
          i = e;
          continue;
        }
      }
      i = j;
    }
  }
  std::stable_sort(raw.begin(), raw.end(), [](const PiiSpan& a, const PiiSpan& b) { return a.begin < b.begin; });
  std::vector<PiiSpan> out;
  for (const auto& s : raw) {
    if (!out.empty() && s.begin < out.back().end) {
      out.back().end = std::max(out.back().end, s.end);
      continue;
    }
    out.push_back(s);
  }
  return out;
}

PiiTokens mark_pii_tokens(const Tokenizer& tok, std::span<const int32_t> ids, const PiiRules& rules) {
  PiiTokens r;
  DecodeOptions opt;
  opt.skip_special = true;
  opt.cleanup = false;
  auto dec = tok.decoder(opt);
  std::vector<size_t> begin(ids.size()), end(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    begin[i] = r.text.size();
    r.text += dec.push(ids[i]);
    end[i] = r.text.size();
  }
  r.text += dec.finish();
  r.spans = rules.find(r.text);
  r.mask.assign(ids.size(), 0);
  r.kind.assign(ids.size(), 0);
  r.item.assign(ids.size(), 0);
  // Both token ranges and spans are sorted by begin: one sweep.
  size_t s = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    size_t b = begin[i], e = end[i];
    // skip leading whitespace of the token ("▁Name" decodes to " Name")
    while (b < e && (r.text[b] == ' ' || r.text[b] == '\n' || r.text[b] == '\t')) ++b;
    while (s < r.spans.size() && r.spans[s].end <= b) ++s;
    if (s >= r.spans.size()) break;
    const auto& sp = r.spans[s];
    bool hit = (e > b) ? (b < sp.end && e > sp.begin) : (b >= sp.begin && b < sp.end && begin[i] == end[i]);
    if (hit) {
      r.mask[i] = 1;
      r.kind[i] = uint8_t(int(sp.kind) + 1);
      r.item[i] = int32_t(s + 1);
    }
  }
  return r;
}

}  // namespace aloepri::audit
