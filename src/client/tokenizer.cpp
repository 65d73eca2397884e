// Loading and encoding of Hugging Face tokenizers (see include/aloepri/tokenizer.h).
// Behaviour follows transformers.js (@lenml/tokenizers 3.7.2), the reference our parity test
// compares against id for id; places where it differs from the Rust `tokenizers` crate are noted.
#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <queue>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "tokenizer_impl.h"

// NFC comes from libutf8proc (Debian: libutf8proc2 / libutf8proc-dev), loaded when a tokenizer
// first needs it: the client module links only core and PCRE2, and a tokenizer without an NFC
// normalizer (Llama) works without the library. If it is missing, NFC tokenizers fail clearly.
namespace {
using Utf8procMap = ptrdiff_t (*)(const uint8_t* str, ptrdiff_t len, uint8_t** dst, int options);
constexpr int kUtf8procStable = 1 << 1, kUtf8procCompose = 1 << 3;  // utf8proc.h option bits
Utf8procMap utf8proc_map_fn() {
  static const Utf8procMap fn = []() -> Utf8procMap {
    if (void* f = dlsym(RTLD_DEFAULT, "utf8proc_map")) return reinterpret_cast<Utf8procMap>(f);
    for (const char* lib : {"libutf8proc.so.3", "libutf8proc.so.2", "libutf8proc.so"})
      if (void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL))
        if (void* f = dlsym(h, "utf8proc_map")) return reinterpret_cast<Utf8procMap>(f);
    return nullptr;
  }();
  return fn;
}
}  // namespace

namespace aloepri {
namespace fs = std::filesystem;
using nlohmann::json;

// ------------------------------------------------------------------------------------------------
// Small helpers

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  size_ = 0;
}

void MergeTable::put(int32_t a, int32_t b, int32_t rank, int32_t result) {
  if ((size_ + 1) * 2 > slots_.size()) {  // grow
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(old.size(), 16));
    for (const Slot& s : old)
      if (s.key != kEmpty) put(int32_t(s.key >> 32), int32_t(s.key & 0xffffffffu), s.hit.rank, s.hit.result);
  }
  uint64_t k = key(a, b);
  for (size_t i = hash(k) & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == k) {
      s.hit = {rank, result};
      return;
    }
    if (s.key == kEmpty) {
      s.key = k;
      s.hit = {rank, result};
      ++size_;
      return;
    }
  }
}

const std::vector<char32_t>& byte_to_unicode() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) t[b] = direct[b] ? char32_t(b) : char32_t(256 + n++);
    return t;
  }();
  return table;
}

int unicode_to_byte(char32_t cp) {
  static const std::vector<int> inv = [] {
    std::vector<int> v(512, -1);
    const auto& t = byte_to_unicode();
    for (int b = 0; b < 256; ++b) v[t[b]] = b;
    return v;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

char32_t next_cp(std::string_view s, size_t& i) {
  unsigned char c = s[i];
  if (c < 0x80) {
    ++i;
    return c;
  }
  int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  char32_t cp = c & (0x3F >> n);
  for (int k = 1; k <= n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n + 1;
  return cp;
}

static size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2; }

bool js_is_space(char32_t c) {
  return (c >= 9 && c <= 13) || c == 0x20 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

std::string js_trim(std::string_view s, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e) {
      size_t j = b;
      if (!js_is_space(next_cp(s, j))) break;
      b = j;
    }
  }
  if (right) {
    while (e > b) {
      size_t st = e - 1;
      while (st > b && (static_cast<unsigned char>(s[st]) & 0xC0) == 0x80) --st;
      size_t j = st;
      if (!js_is_space(next_cp(s, j))) break;
      e = st;
    }
  }
  return std::string(s.substr(b, e - b));
}

// WHATWG UTF-8 decode with replacement (what a JS string built from these bytes would hold).
std::string utf8_sanitize(std::string_view s) {
  // Fast path: already valid.
  size_t i = 0, n = s.size();
  auto valid_at = [&](size_t p, size_t& len) {
    unsigned char c = s[p];
    if (c < 0x80) return len = 1, true;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return len = 0, false;
    for (size_t k = 1; k < len; ++k) {
      if (p + k >= n) return len = k, false;
      unsigned char d = s[p + k];
      if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) return len = k, false;
    }
    return true;
  };
  size_t len = 0;
  while (i < n && valid_at(i, len)) i += len;
  if (i == n) return std::string(s);
  std::string out(s.substr(0, i));
  while (i < n) {
    if (valid_at(i, len)) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += std::max<size_t>(len, 1);  // the maximal invalid subpart
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Regex: the file's pattern, rewritten so that PCRE2 (UTF + UCP) matches what the JS engine of
// transformers.js matches with the "gu" flags.

// Letters and numbers added in Unicode 15.0-17.0 (Node 20 / ICU 78 knows them, PCRE2 10.42 stops
// at Unicode 14): generated by comparing /\p{L}/u and /\p{N}/u in Node with PCRE2 over all code
// points. Harmless with a newer PCRE2.
static const char* kExtraL =
    "\\x{88F}\\x{C5C}\\x{CDC}\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CF}\\x{A7D2}\\x{A7D4}\\x{A7DA}-\\x{A7DC}"
    "\\x{A7F1}\\x{105C0}-\\x{105F3}\\x{10940}-\\x{10959}\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}"
    "\\x{10EC2}-\\x{10EC7}\\x{1123F}-\\x{11240}\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}"
    "\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11DB0}-\\x{11DDB}"
    "\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}"
    "\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}\\x{16D40}-\\x{16D6C}\\x{16EA0}-\\x{16EB8}"
    "\\x{16EBB}-\\x{16ED3}\\x{16FF2}-\\x{16FF3}\\x{187F8}-\\x{187FF}\\x{18CFF}\\x{18D09}-\\x{18D1E}"
    "\\x{18D80}-\\x{18DF2}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}"
    "\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{1E6C0}-\\x{1E6DE}\\x{1E6E0}-\\x{1E6E2}"
    "\\x{1E6E4}-\\x{1E6E5}\\x{1E6E7}-\\x{1E6ED}\\x{1E6F0}-\\x{1E6F4}\\x{1E6FE}-\\x{1E6FF}"
    "\\x{2B739}-\\x{2B73F}\\x{2CEA2}-\\x{2CEAD}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{33479}";
static const char* kExtraN =
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11DE0}-\\x{11DE9}"
    "\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{16FF4}-\\x{16FF6}"
    "\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}";
// JS \s: WhiteSpace + LineTerminator. PCRE2's UCP \s also has U+0085 and U+180E, lacks U+FEFF.
static const char* kJsSpace =
    "\\t\\n\\x{0B}\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}\\x{FEFF}";

static std::string js_compatible_pattern(std::string pat) {
  // transformers.js rewrites the case-insensitive contraction group (JS had no inline flags);
  // PCRE2's caseless matching would also accept U+017F / U+212A, JS's rewrite does not.
  static const std::string ci = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
  static const std::string ci_js = "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))";
  for (size_t p; (p = pat.find(ci)) != std::string::npos;) pat.replace(p, ci.size(), ci_js);

  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pat.size(); ++i) {
    char c = pat[i];
    if (c == '\\' && i + 1 < pat.size()) {
      char e = pat[i + 1];
      std::string rep;
      size_t used = 2;
      auto prop = [&](char which) -> bool {  // \p{L} / \p{N} / \pL / \pN
        if (pat.compare(i, 5, std::string("\\p{") + which + "}") == 0) return used = 5, true;
        if (pat.compare(i, 3, std::string("\\p") + which) == 0) return used = 3, true;
        return false;
      };
      if (e == 's') rep = in_class ? std::string(kJsSpace) : "[" + std::string(kJsSpace) + "]";
      else if (e == 'S' && !in_class) rep = "[^" + std::string(kJsSpace) + "]";
      else if (e == 'd') rep = in_class ? "0-9" : "[0-9]";  // JS \d, \w are ASCII even with /u
      else if (e == 'D' && !in_class) rep = "[^0-9]";
      else if (e == 'w') rep = in_class ? "A-Za-z0-9_" : "[A-Za-z0-9_]";
      else if (e == 'W' && !in_class) rep = "[^A-Za-z0-9_]";
      else if (prop('L')) rep = in_class ? "\\p{L}" + std::string(kExtraL) : "[\\p{L}" + std::string(kExtraL) + "]";
      else if (prop('N')) rep = in_class ? "\\p{N}" + std::string(kExtraN) : "[\\p{N}" + std::string(kExtraN) + "]";
      else rep = pat.substr(i, 2);
      out += rep;
      i += used - 1;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pat.size() && pat[i + 1] == '^') out += pat[++i];
      if (i + 1 < pat.size() && pat[i + 1] == ']') out += pat[++i];  // literal ']' first
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

static std::shared_ptr<Regex> compile_regex(const std::string& pattern, const std::string& where) {
  auto re = std::make_shared<Regex>();
  std::string p = js_compatible_pattern(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!re->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(where, "cannot compile regex /" + pattern + "/ at offset " + std::to_string(off) + ": " +
                           reinterpret_cast<char*>(msg));
  }
  re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
  return re;
}

// Per-thread PCRE2 scratch (match data and a JIT stack big enough for long whitespace runs).
struct MatchScratch {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* ctx = [this] {
    pcre2_match_context* c = pcre2_match_context_create(nullptr);
    pcre2_jit_stack_assign(c, nullptr, stack);
    return c;
  }();
  ~MatchScratch() {
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(md);
  }
};
static MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

// Calls f(begin, end, is_match) for each gap and match, in order (JS regexSplit / String.match).
template <class F>
static void regex_scan(const Regex& re, std::string_view text, F&& f) {
  MatchScratch& sc = scratch();
  size_t pos = 0, prev = 0;
  while (pos <= text.size()) {
    int rc = re.jit ? pcre2_jit_match(re.code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, sc.md, sc.ctx)
                    : pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, PCRE2_NO_UTF_CHECK, sc.md, sc.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error("tokenizer regex", std::string("match failed: ") + reinterpret_cast<char*>(msg), kExitError);
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(sc.md);
    size_t b = ov[0], e = ov[1];
    if (b > prev) f(prev, b, false);
    if (e > b) f(b, e, true);
    prev = e;
    if (e == b) {  // empty match: step over one character, as JS matchAll does
      if (e >= text.size()) break;
      pos = e + utf8_len(static_cast<unsigned char>(text[e]));
    } else {
      pos = e;
    }
  }
  if (prev < text.size()) f(prev, text.size(), false);
}

// ------------------------------------------------------------------------------------------------
// Loading

namespace {

std::string byte_level_to_raw(const std::string& s, bool* ok) {
  std::string out;
  out.reserve(s.size());
  *ok = true;
  for (size_t i = 0; i < s.size();) {
    int b = unicode_to_byte(next_cp(s, i));
    if (b < 0) {
      *ok = false;
      return {};
    }
    out += char(b);
  }
  return out;
}

bool has_type(const json& j, const std::string& type) {
  if (!j.is_object()) return false;
  if (j.value("type", "") == type) return true;
  for (const char* k : {"pretokenizers", "normalizers", "decoders", "processors"})
    if (j.contains(k) && j[k].is_array())
      for (const auto& x : j[k])
        if (has_type(x, type)) return true;
  return false;
}

std::string token_content(const json& v) {  // "<s>" or {"__type":"AddedToken","content":"<s>"}
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

static void load_normalizer(Tokenizer::Impl& m, const json& n, const std::string& where) {
  if (n.is_null()) return;
  std::string t = n.value("type", "");
  using N = Tokenizer::Impl::Norm;
  if (t == "Sequence") {
    for (const auto& x : n.at("normalizers")) load_normalizer(m, x, where);
  } else if (t == "NFC") {
    m.normalizers.push_back({N::kNFC, {}, {}});
  } else if (t == "Prepend") {
    m.normalizers.push_back({N::kPrepend, n.at("prepend").get<std::string>(), {}});
  } else if (t == "Replace") {
    const json& p = n.at("pattern");
    if (!p.contains("String")) throw Error(where, "normalizer Replace with a regex pattern is not supported");
    m.normalizers.push_back({N::kReplace, p["String"].get<std::string>(), n.at("content").get<std::string>()});
  } else if (t == "Strip") {
    N s{N::kStrip, {}, {}};
    s.left = n.value("strip_left", false);
    s.right = n.value("strip_right", false);
    m.normalizers.push_back(s);
  } else {
    throw Error(where, "normalizer type '" + t + "' is not supported (supported: NFC, Prepend, Replace, Strip, Sequence)");
  }
}

static void load_pretokenizer(Tokenizer::Impl& m, const json& p, const std::string& where) {
  if (p.is_null()) return;
  std::string t = p.value("type", "");
  using P = Tokenizer::Impl::Pre;
  if (t == "Sequence") {
    for (const auto& x : p.at("pretokenizers")) load_pretokenizer(m, x, where);
  } else if (t == "Split") {
    const json& pat = p.at("pattern");
    P s{};
    s.kind = P::kSplit;
    if (pat.contains("Regex")) {
      s.re = compile_regex(pat["Regex"].get<std::string>(), where + ": pre_tokenizer Split");
    } else {
      // A literal string: escape it for PCRE2.
      std::string lit = pat.at("String").get<std::string>(), esc;
      for (char c : lit) {
        if (std::strchr("\\^$.|?*+()[]{}", c)) esc += '\\';
        esc += c;
      }
      s.re = std::make_shared<Regex>();
      int err;
      PCRE2_SIZE off;
      s.re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(esc.data()), esc.size(), PCRE2_UTF, &err, &off, nullptr);
      require(s.re->code != nullptr, where, "cannot compile Split string pattern");
      s.re->jit = pcre2_jit_compile(s.re->code, PCRE2_JIT_COMPLETE) == 0;
    }
    s.invert = p.value("invert", false);
    std::string beh = p.value("behavior", "Isolated");
    std::transform(beh.begin(), beh.end(), beh.begin(), ::tolower);
    s.removed = beh == "removed";  // transformers.js treats every other behaviour as Isolated
    if (m.byte_level) throw Error(where, "pre_tokenizer: Split after ByteLevel is not supported");
    m.pretok.push_back(std::move(s));
  } else if (t == "ByteLevel") {
    P s{};
    s.kind = P::kByteLevel;
    s.add_prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true))
      s.re = compile_regex("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
                           where + ": pre_tokenizer ByteLevel");
    m.byte_level = true;
    m.pretok.push_back(std::move(s));
  } else if (t == "Metaspace") {
    P s{};
    s.kind = P::kMetaspace;
    s.replacement = p.value("replacement", "\xE2\x96\x81");
    s.add_prefix_space = p.value("add_prefix_space", true);
    s.prepend_scheme = p.value("prepend_scheme", "always");
    // transformers.js does not split on the replacement here (the Rust crate does with split=true);
    // we follow transformers.js, which the parity test checks.
    m.pretok.push_back(std::move(s));
  } else {
    throw Error(where, "pre_tokenizer type '" + t + "' is not supported (supported: Split, ByteLevel, Metaspace, Sequence)");
  }
}

static void load_post(Tokenizer::Impl& m, const json& p, const std::string& where) {
  if (p.is_null()) return;
  std::string t = p.value("type", "");
  if (t == "Sequence") {
    for (const auto& x : p.at("processors")) load_post(m, x, where);
  } else if (t == "ByteLevel") {
    // Offsets only: no tokens added.
  } else if (t == "TemplateProcessing") {
    m.has_template = true;
    bool seen_a = false;
    for (const auto& item : p.at("single")) {
      if (item.contains("SpecialToken")) {
        std::string name = item["SpecialToken"].at("id").get<std::string>();
        // transformers.js pushes the token *string* and converts it through the vocabulary.
        auto it = m.file_token_to_id.find(name);
        require(it != m.file_token_to_id.end(), where, "post_processor special token '" + name + "' is not in the vocabulary");
        (seen_a ? m.single_suffix : m.single_prefix).push_back(it->second);
      } else if (item.contains("Sequence")) {
        seen_a = true;
      }
    }
  } else {
    throw Error(where, "post_processor type '" + t + "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
  }
}

static void load_decoder(Tokenizer::Impl& m, const json& d, const std::string& where) {
  using D = Tokenizer::Impl::Dec;
  if (d.is_null()) return;
  std::string t = d.value("type", "");
  auto unsupported = [&] {
    throw Error(where, "decoder '" + t + "' is not supported here (supported: ByteLevel; Sequence of Replace/ByteFallback/Fuse/Strip; Metaspace)");
  };
  if (t == "ByteLevel") {
    if (m.dec != D::kNone) unsupported();
    m.dec = D::kByteLevel;
  } else if (t == "Sequence") {
    for (const auto& x : d.at("decoders")) load_decoder(m, x, where);
  } else if (t == "Replace") {
    if (m.dec == D::kByteLevel) unsupported();
    m.dec = D::kPieces;
    const json& p = d.at("pattern");
    if (!p.contains("String")) throw Error(where, "decoder Replace with a regex pattern is not supported");
    m.dec_replace.emplace_back(p["String"].get<std::string>(), d.at("content").get<std::string>());
  } else if (t == "ByteFallback") {
    if (m.dec == D::kByteLevel) unsupported();
    m.dec = D::kPieces;
    m.dec_byte_fallback = true;
  } else if (t == "Fuse") {
    if (m.dec == D::kByteLevel) unsupported();
    m.dec = D::kPieces;  // pieces are concatenated anyway
  } else if (t == "Strip") {
    if (m.dec == D::kByteLevel) unsupported();
    m.dec = D::kPieces;
    require(d.value("content", " ") == " " && d.value("stop", 0) == 0, where, "decoder Strip: only leading ' ' is supported");
    m.dec_strip_start = d.value("start", 0);
  } else if (t == "Metaspace") {
    if (m.dec == D::kByteLevel) unsupported();
    m.dec = D::kPieces;
    m.dec_replace.emplace_back(d.value("replacement", "\xE2\x96\x81"), " ");
    m.dec_metaspace_first = d.value("add_prefix_space", true);
  } else {
    unsupported();
  }
}

Tokenizer Tokenizer::from_json(const json& tj, const json& cfg_in, const std::string& where) {
  auto m = std::make_shared<Impl>();
  m->where = where;
  if (cfg_in.is_object()) m->config = cfg_in;
  const json& cfg = m->config;
  require(tj.is_object() && tj.contains("model") && tj["model"].is_object(), where, "no 'model' object");
  const json& model = tj["model"];
  std::string type = model.value("type", "BPE");
  require(type == "BPE", where, "model type '" + type + "' is not supported (only BPE)");
  require(model.contains("vocab") && model["vocab"].is_object(), where, "model.vocab missing");

  // Normalizer / pre-tokenizer first: they decide whether the model space is byte-mapped.
  load_normalizer(*m, tj.value("normalizer", json()), where + ": normalizer");
  load_pretokenizer(*m, tj.value("pre_tokenizer", json()), where + ": pre_tokenizer");

  // Vocabulary.
  size_t max_id = 0;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    require(it.value().is_number_integer() && it.value().get<int64_t>() >= 0, where, "model.vocab['" + it.key() + "'] is not an id");
    max_id = std::max<size_t>(max_id, it.value().get<size_t>());
  }
  const json& added = tj.value("added_tokens", json::array());
  for (const auto& a : added) max_id = std::max<size_t>(max_id, a.at("id").get<size_t>());
  m->id_token.assign(max_id + 1, "");
  m->id_flags.assign(max_id + 1, 0);
  auto model_key = [&](const std::string& s, bool* ok) {
    if (!m->byte_level) return *ok = true, s;
    return byte_level_to_raw(s, ok);
  };
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    int32_t id = it.value().get<int32_t>();
    m->id_token[id] = it.key();
    m->file_token_to_id[it.key()] = id;
    bool ok;
    std::string k = model_key(it.key(), &ok);
    if (ok) m->model_token_to_id[k] = id;
  }
  // Added tokens override the model's vocabulary (transformers.js sets them into tokens_to_ids).
  for (const auto& a : added) {
    Impl::Added t{a.at("id").get<int32_t>(), a.at("content").get<std::string>(), a.value("lstrip", false),
                  a.value("rstrip", false), a.value("special", false)};
    require(!t.content.empty(), where, "added token " + std::to_string(t.id) + " has empty content");
    m->id_token[t.id] = t.content;
    m->id_flags[t.id] |= 1 | (t.special ? 2 : 0);
    m->file_token_to_id[t.content] = t.id;
    bool ok;
    std::string k = model_key(t.content, &ok);
    if (ok) m->model_token_to_id[k] = t.id;
    m->added.push_back(std::move(t));
  }
  // Trie for the added-token splitter.
  m->trie.emplace_back();
  for (size_t i = 0; i < m->added.size(); ++i) {
    int32_t node = 0;
    for (unsigned char c : m->added[i].content) {
      auto f = m->trie[node].next.find(c);
      if (f == m->trie[node].next.end()) {
        m->trie.emplace_back();
        int32_t nn = int32_t(m->trie.size() - 1);
        m->trie[node].next[c] = nn;
        node = nn;
      } else {
        node = f->second;
      }
    }
    m->trie[node].added = int32_t(i);
    m->first_byte[static_cast<unsigned char>(m->added[i].content[0])] = true;
  }

  // BPE symbols and merges.
  m->ignore_merges = model.value("ignore_merges", false);
  m->byte_fallback = model.value("byte_fallback", false);
  m->fuse_unk = model.value("fuse_unk", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    m->unk_token = model["unk_token"].get<std::string>();
    auto it = m->file_token_to_id.find(m->unk_token);
    if (it != m->file_token_to_id.end()) m->unk_id = it->second;
  }
  for (const auto& [k, id] : m->model_token_to_id) {
    m->sym_of.emplace(k, int32_t(m->sym_id.size()));
    m->sym_id.push_back(id);
  }
  auto sym = [&](const std::string& s) {
    auto [it, fresh] = m->sym_of.emplace(s, int32_t(m->sym_id.size()));
    if (fresh) m->sym_id.push_back(-1);  // a merge product that is not in the vocabulary
    return it->second;
  };
  const json& merges = model.value("merges", json::array());
  m->merges.reserve(merges.size());
  static const std::string kMeta = "\xE2\x96\x81";
  bool merge_crosses_meta = false;
  for (size_t r = 0; r < merges.size(); ++r) {
    std::string a, b;
    const json& mg = merges[r];
    if (mg.is_array()) {
      require(mg.size() == 2, where, "model.merges[" + std::to_string(r) + "] is not a pair");
      a = mg[0].get<std::string>();
      b = mg[1].get<std::string>();
    } else {
      // "a b" (JS: split(" ", 2): the part after a second space is dropped).
      std::string s = mg.get<std::string>();
      size_t sp = s.find(' ');
      require(sp != std::string::npos, where, "model.merges[" + std::to_string(r) + "] has no space");
      a = s.substr(0, sp);
      size_t sp2 = s.find(' ', sp + 1);
      b = s.substr(sp + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp - 1);
    }
    bool oka, okb;
    std::string ka = model_key(a, &oka), kb = model_key(b, &okb);
    if (!oka || !okb) continue;  // cannot occur in a byte-mapped word: never applies
    std::string ab = ka + kb;
    if (!m->byte_level) {
      // Does this merge glue a non-▁ character to a following ▁? (see split_at_metaspace)
      for (size_t p = ab.find(kMeta); p != std::string::npos; p = ab.find(kMeta, p + 1))
        if (p > 0 && (p < 3 || ab.compare(p - 3, 3, kMeta) != 0)) merge_crosses_meta = true;
    }
    m->merges.put(sym(ka), sym(kb), int32_t(r), sym(ab));
  }
  m->split_at_metaspace = !m->byte_level && !merge_crosses_meta;
  for (int b = 0; b < 256; ++b) {
    m->byte_sym[b] = m->byte_level ? sym(std::string(1, char(b))) : -1;
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = m->file_token_to_id.find(name);
    m->byte_token_id[b] = it == m->file_token_to_id.end() ? -1 : it->second;
  }

  load_post(*m, tj.value("post_processor", json()), where + ": post_processor");
  load_decoder(*m, tj.value("decoder", json()), where + ": decoder");
  require(m->dec != Impl::Dec::kNone, where, "no decoder: this tokenizer family is not supported");

  // Decoding tables.
  m->id_byte.assign(m->id_token.size(), -1);
  if (m->dec == Impl::Dec::kByteLevel) {
    m->id_bytes.resize(m->id_token.size());
    for (size_t id = 0; id < m->id_token.size(); ++id) {
      if (m->id_flags[id] & 1) {
        m->id_bytes[id] = m->id_token[id];
        continue;
      }
      const std::string& s = m->id_token[id];
      std::string raw;
      for (size_t i = 0; i < s.size();) {
        int b = unicode_to_byte(next_cp(s, i));
        raw += char(b < 0 ? 0 : b);  // JS maps unknown characters to byte 0
      }
      m->id_bytes[id] = std::move(raw);
    }
  } else {
    for (size_t id = 0; id < m->id_token.size(); ++id) {
      const std::string& s = m->id_token[id];
      if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' && std::isxdigit(static_cast<unsigned char>(s[3])) &&
          std::isxdigit(static_cast<unsigned char>(s[4])))
        m->id_byte[id] = int16_t(std::stoi(s.substr(3, 2), nullptr, 16));
    }
  }

  // tokenizer_config.json.
  m->cleanup_default = cfg.value("clean_up_tokenization_spaces", true);
  std::vector<std::string> specials;
  for (const auto& a : m->added)
    if (a.special) specials.push_back(a.content);
  if (cfg.contains("additional_special_tokens") && cfg["additional_special_tokens"].is_array())
    for (const auto& x : cfg["additional_special_tokens"]) specials.push_back(token_content(x));
  for (const auto& s : specials) {
    auto it = m->file_token_to_id.find(s);
    if (it != m->file_token_to_id.end()) m->special_ids.insert(it->second);
  }
  auto special = [&](const char* key, std::optional<int32_t>& id, std::string& tok) {
    if (!cfg.contains(key)) return;
    tok = token_content(cfg[key]);
    if (tok.empty()) return;
    auto it = m->file_token_to_id.find(tok);
    if (it != m->file_token_to_id.end()) id = it->second;
  };
  special("bos_token", m->bos, m->bos_tok);
  special("eos_token", m->eos, m->eos_tok);
  // transformers.js' LlamaTokenizer with legacy=false (the HF fix of huggingface/transformers#24565):
  // no normalizer, a Metaspace pre-tokenizer that prefixes only the first section, and encode()
  // works on "▁" + text with "▁" replaced by " " (dropping that "▁" before a special token).
  std::string cls = cfg.value("tokenizer_class", "");
  if ((cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast") && cfg.contains("legacy") && cfg["legacy"] == false) {
    m->normalizers.clear();
    m->pretok.clear();
    Impl::Pre p{};
    p.kind = Impl::Pre::kMetaspace;
    p.replacement = "\xE2\x96\x81";
    p.add_prefix_space = true;
    p.prepend_scheme = "first";
    m->pretok.push_back(std::move(p));
    m->llama_non_legacy = true;
  }
  // Without a TemplateProcessing post-processor, HF's slow tokenizers use add_bos/eos_token.
  if (!m->has_template) {
    if (cfg.value("add_bos_token", false) && m->bos) m->single_prefix.push_back(*m->bos);
    if (cfg.value("add_eos_token", false) && m->eos) m->single_suffix.push_back(*m->eos);
  }
  Tokenizer t;
  t.impl_ = std::move(m);
  return t;
}

Tokenizer Tokenizer::load(const std::string& path) {
  fs::path p(path);
  fs::path tj = fs::is_directory(p) ? p / "tokenizer.json" : p;
  require(fs::exists(tj), tj.string(), "not found (expected a model directory or a tokenizer.json file)");
  fs::path cj = tj.parent_path() / "tokenizer_config.json";
  json t, c;
  try {
    t = json::parse(read_file(tj.string()));
  } catch (const json::exception& e) {
    throw Error(tj.string(), std::string("invalid JSON: ") + e.what());
  }
  if (fs::exists(cj)) {
    try {
      c = json::parse(read_file(cj.string()));
    } catch (const json::exception& e) {
      throw Error(cj.string(), std::string("invalid JSON: ") + e.what());
    }
  }
  try {
    return from_json(t, c, tj.string());
  } catch (const json::exception& e) {
    throw Error(tj.string(), std::string("unexpected structure: ") + e.what());
  }
}

// ------------------------------------------------------------------------------------------------
// Encoding

namespace {

// Per-thread cache of BPE results for short pre-tokens; belongs to one tokenizer at a time.
struct BpeCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> map;  // word -> (offset, count)
  std::vector<int32_t> pool;
  void reset(uint64_t o) {
    owner = o;
    map.clear();
    pool.clear();
  }
};
BpeCache& bpe_cache() {
  thread_local BpeCache c;
  return c;
}
constexpr size_t kCacheMaxWord = 128, kCacheMaxEntries = 1 << 18;

std::string nfc(std::string_view s, const std::string& where) {
  // Fast path: no code point >= U+0300 means nothing can compose.
  bool simple = true;
  for (unsigned char c : s)
    if (c >= 0xCC) {
      simple = false;
      break;
    }
  if (simple) return std::string(s);
  Utf8procMap map = utf8proc_map_fn();
  if (!map) throw Error(where, "NFC normalization needs libutf8proc (Debian package libutf8proc2), which is not installed", kExitError);
  uint8_t* dst = nullptr;
  ptrdiff_t n = map(reinterpret_cast<const uint8_t*>(s.data()), ptrdiff_t(s.size()), &dst, kUtf8procStable | kUtf8procCompose);
  if (n < 0) throw Error(where, "NFC failed (utf8proc error " + std::to_string(n) + ")", kExitError);
  std::string out(reinterpret_cast<char*>(dst), size_t(n));
  std::free(dst);
  return out;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t i = 0;
  for (size_t p; (p = s.find(from, i)) != std::string::npos; i = p + from.size()) {
    out.append(s, i, p - i);
    out += to;
  }
  if (i == 0) return;
  out.append(s, i, std::string::npos);
  s = std::move(out);
}

}  // namespace

// BPE over one word, lowest rank first, leftmost on ties (what transformers.js' heap with a
// positional bias and the Rust crate both do), then vocabulary / byte fallback / unk.
void Tokenizer::Impl::bpe_symbols(std::string_view word, std::vector<int32_t>& out) const {
  struct Node {
    int32_t sym;
    uint32_t start, end;
    int32_t prev, next;
  };
  thread_local std::vector<Node> nodes;
  nodes.clear();
  if (byte_level) {
    for (size_t i = 0; i < word.size(); ++i)
      nodes.push_back({byte_sym[static_cast<unsigned char>(word[i])], uint32_t(i), uint32_t(i + 1), int32_t(i) - 1, int32_t(i) + 1});
  } else {
    for (size_t i = 0; i < word.size();) {
      size_t l = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
      auto it = sym_of.find(std::string(word.substr(i, l)));
      int32_t k = int32_t(nodes.size());
      nodes.push_back({it == sym_of.end() ? -1 : it->second, uint32_t(i), uint32_t(i + l), k - 1, k + 1});
      i += l;
    }
  }
  const int32_t n = int32_t(nodes.size());
  if (n == 0) return;
  nodes[n - 1].next = -1;

  if (n <= 48) {
    // Short words: keep each adjacent pair's rank and rescan for the minimum (no heap).
    int32_t rank[48];
    int32_t idx[48];
    int32_t cnt = n;
    for (int32_t i = 0; i < n; ++i) idx[i] = i;
    auto pair_rank = [&](int32_t i) {
      const MergeTable::Hit* h = merges.get(nodes[idx[i]].sym, nodes[idx[i + 1]].sym);
      return h ? h->rank : INT32_MAX;
    };
    for (int32_t i = 0; i + 1 < cnt; ++i) rank[i] = pair_rank(i);
    while (cnt > 1) {
      int32_t best = INT32_MAX, bi = -1;
      for (int32_t i = 0; i + 1 < cnt; ++i)
        if (rank[i] < best) best = rank[i], bi = i;
      if (bi < 0) break;
      Node& l = nodes[idx[bi]];
      const Node& r = nodes[idx[bi + 1]];
      l.sym = merges.get(l.sym, r.sym)->result;
      l.end = r.end;
      for (int32_t i = bi + 1; i + 1 < cnt; ++i) idx[i] = idx[i + 1];
      for (int32_t i = bi + 1; i + 2 < cnt; ++i) rank[i] = rank[i + 1];
      --cnt;
      if (bi + 1 < cnt) rank[bi] = pair_rank(bi);
      if (bi > 0) rank[bi - 1] = pair_rank(bi - 1);
    }
    for (int32_t i = 0; i < cnt; ++i) nodes[i] = nodes[idx[i]];
    nodes.resize(cnt);
    for (int32_t i = 0; i < cnt; ++i) nodes[i].next = i + 1 < cnt ? i + 1 : -1;
  } else {
    struct Cand {
      int32_t rank;
      uint32_t pos;  // start byte of the left node: ties go to the leftmost pair
      int32_t left, lsym, rsym;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int32_t i) {
      int32_t j = nodes[i].next;
      if (j < 0) return;
      if (const MergeTable::Hit* h = merges.get(nodes[i].sym, nodes[j].sym))
        heap.push({h->rank, nodes[i].start, i, nodes[i].sym, nodes[j].sym});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      Cand c = heap.top();
      heap.pop();
      Node& l = nodes[c.left];
      if (l.sym != c.lsym || l.next < 0) continue;  // stale (merged away or changed)
      Node& r = nodes[l.next];
      if (r.sym != c.rsym) continue;
      l.sym = merges.get(l.sym, r.sym)->result;
      l.end = r.end;
      r.sym = -2;  // dead
      l.next = r.next;
      if (r.next >= 0) nodes[r.next].prev = c.left;
      if (l.prev >= 0) push(l.prev);
      push(c.left);
    }
    // Compact the linked list.
    std::vector<Node> live;
    for (int32_t i = 0; i >= 0; i = nodes[i].next) live.push_back(nodes[i]);
    nodes = std::move(live);
  }

  for (const Node& nd : nodes) {
    int32_t id = nd.sym >= 0 ? sym_id[nd.sym] : -1;
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (uint32_t k = nd.start; k < nd.end; ++k) all &= byte_token_id[static_cast<unsigned char>(word[k])] >= 0;
      if (all) {
        for (uint32_t k = nd.start; k < nd.end; ++k) out.push_back(byte_token_id[static_cast<unsigned char>(word[k])]);
        continue;
      }
    }
    if (unk_id < 0) throw Error(where, "text needs the unknown token, but the model has none");
    out.push_back(unk_id);
  }
}

void Tokenizer::Impl::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = model_token_to_id.find(std::string(word));
    if (it != model_token_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() > kCacheMaxWord) {
    bpe_symbols(word, out);
    return;
  }
  BpeCache& c = bpe_cache();
  if (c.owner != serial || c.map.size() > kCacheMaxEntries) c.reset(serial);
  thread_local std::string key;
  key.assign(word);
  auto it = c.map.find(key);
  if (it != c.map.end()) {
    out.insert(out.end(), c.pool.begin() + it->second.first, c.pool.begin() + it->second.first + it->second.second);
    return;
  }
  size_t before = out.size();
  bpe_symbols(word, out);
  uint32_t off = uint32_t(c.pool.size());
  c.pool.insert(c.pool.end(), out.begin() + before, out.end());
  c.map.emplace(key, std::make_pair(off, uint32_t(out.size() - before)));
}

void Tokenizer::Impl::encode_section(std::string_view raw, size_t section_index, std::vector<int32_t>& out) const {
  std::string text(raw);
  for (const Norm& n : normalizers) {
    switch (n.kind) {
      case Norm::kNFC: text = nfc(text, where); break;
      case Norm::kPrepend: text = n.a + text; break;
      case Norm::kReplace: replace_all(text, n.a, n.b); break;
      case Norm::kStrip: text = js_trim(text, n.left, n.right); break;
    }
  }
  if (text.empty()) return;

  // Pre-tokenize into words (byte ranges of `text`, or owned strings after a rewrite).
  std::deque<std::string> owned;  // stable addresses: `words` views point into it
  std::vector<std::string_view> words{std::string_view(text)};
  for (const Pre& p : pretok) {
    std::vector<std::string_view> next;
    if (p.kind == Pre::kSplit || (p.kind == Pre::kByteLevel && p.re)) {
      if (p.kind == Pre::kByteLevel && p.add_prefix_space) {
        // Prefix a space to each word that lacks one (transformers.js does it per pre-token).
        size_t first_owned = owned.size();
        for (auto w : words) owned.push_back(w.empty() || w[0] != ' ' ? " " + std::string(w) : std::string(w));
        words.assign(owned.begin() + first_owned, owned.end());
      }
      for (auto w : words) {
        regex_scan(*p.re, w, [&](size_t b, size_t e, bool match) {
          bool keep = p.kind == Pre::kByteLevel ? match : p.invert ? match : p.removed ? !match : true;
          if (keep) next.push_back(w.substr(b, e - b));
        });
      }
      words = std::move(next);
    } else if (p.kind == Pre::kByteLevel) {
      if (p.add_prefix_space) {
        size_t first_owned = owned.size();
        for (auto w : words) owned.push_back(w.empty() || w[0] != ' ' ? " " + std::string(w) : std::string(w));
        words.assign(owned.begin() + first_owned, owned.end());
      }
    } else {  // Metaspace
      size_t first_owned = owned.size();
      for (auto w : words) {
        std::string s(w);
        replace_all(s, " ", p.replacement);
        if (p.add_prefix_space && s.compare(0, p.replacement.size(), p.replacement) != 0 &&
            (p.prepend_scheme == "always" || (p.prepend_scheme == "first" && section_index == 0)))
          s = p.replacement + s;
        owned.push_back(std::move(s));
      }
      words.assign(owned.begin() + first_owned, owned.end());
    }
  }

  size_t start = out.size();
  static const std::string kMeta = "\xE2\x96\x81";
  for (auto w : words) {
    if (split_at_metaspace && w.size() > kCacheMaxWord) {
      // No merge joins "x" and a following "▁": cut there so the pieces hit the cache.
      size_t b = 0;
      for (size_t p = w.find(kMeta, 1); p != std::string_view::npos; p = w.find(kMeta, p + 3)) {
        if (p >= 3 && w.compare(p - 3, 3, kMeta) == 0) continue;  // inside a run of ▁
        bpe_word(w.substr(b, p - b), out);
        b = p;
      }
      bpe_word(w.substr(b), out);
    } else {
      bpe_word(w, out);
    }
  }
  if (fuse_unk && unk_id >= 0) {
    size_t o = start;
    for (size_t i = start; i < out.size(); ++i)
      if (!(out[i] == unk_id && o > start && out[o - 1] == unk_id)) out[o++] = out[i];
    out.resize(o);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special) const {
  const Impl& m = *impl_;
  std::string text = utf8_sanitize(input);
  static const std::string kMeta = "\xE2\x96\x81";
  if (m.llama_non_legacy && !text.empty()) {
    replace_all(text, kMeta, " ");
    text = kMeta + text;
  }
  // Split on added tokens (leftmost, longest), like transformers.js' DictionarySplitter.
  struct Section {
    size_t b, e;
    int32_t added;
  };
  std::vector<Section> sections;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    if (!m.first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    int32_t node = 0, match = -1;
    size_t mlen = 0;
    for (size_t j = i; j < text.size(); ++j) {
      auto f = m.trie[node].next.find(static_cast<unsigned char>(text[j]));
      if (f == m.trie[node].next.end()) break;
      node = f->second;
      if (m.trie[node].added >= 0) match = m.trie[node].added, mlen = j + 1 - i;
    }
    if (match < 0) {
      ++i;
      continue;
    }
    if (i > start) sections.push_back({start, i, -1});
    sections.push_back({i, i + mlen, match});
    i += mlen;
    start = i;
  }
  if (start < text.size() || sections.empty()) sections.push_back({start, text.size(), -1});

  // lstrip / rstrip trim the neighbouring sections (JS trimEnd / trimStart).
  std::vector<std::string> trimmed(sections.size());
  std::vector<bool> has_trim(sections.size(), false);
  for (size_t i = 0; i < sections.size(); ++i) {
    if (sections[i].added < 0) continue;
    const auto& a = m.added[sections[i].added];
    auto trim = [&](size_t k, bool left) {
      if (sections[k].added >= 0) return;  // JS trims the string; an added token has no spaces at its ends
      std::string cur = has_trim[k] ? trimmed[k] : text.substr(sections[k].b, sections[k].e - sections[k].b);
      trimmed[k] = js_trim(cur, left, !left);
      has_trim[k] = true;
    };
    if (a.lstrip && i > 0) trim(i - 1, false);
    if (a.rstrip && i + 1 < sections.size()) trim(i + 1, true);
  }

  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  for (size_t i = 0; i < sections.size(); ++i) {
    if (sections[i].added >= 0) {
      out.push_back(m.added[sections[i].added].id);
      continue;
    }
    std::string_view s = has_trim[i] ? std::string_view(trimmed[i]) : std::string_view(text).substr(sections[i].b, sections[i].e - sections[i].b);
    if (s.empty()) continue;
    m.encode_section(s, i, out);
  }
  if (m.llama_non_legacy && out.size() > 1 && m.id_token[out[0]] == kMeta && m.special_ids.count(out[1]))
    out.erase(out.begin());
  if (add_special) {
    out.insert(out.begin(), m.single_prefix.begin(), m.single_prefix.end());
    out.insert(out.end(), m.single_suffix.begin(), m.single_suffix.end());
  }
  return out;
}

void Tokenizer::clear_cache() const { bpe_cache().reset(impl_->serial); }

// ------------------------------------------------------------------------------------------------
// Accessors

size_t Tokenizer::vocab_size() const { return impl_->id_token.size(); }
std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->file_token_to_id.find(std::string(token));
  if (it == impl_->file_token_to_id.end()) return std::nullopt;
  return it->second;
}
std::string Tokenizer::id_to_token(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->id_token.size() ? impl_->id_token[id] : std::string();
}
bool Tokenizer::is_special(int32_t id) const { return impl_->special_ids.count(id) > 0; }
bool Tokenizer::is_added(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->id_flags.size() && (impl_->id_flags[id] & 1);
}
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
std::string Tokenizer::bos_token() const { return impl_->bos_tok; }
std::string Tokenizer::eos_token() const { return impl_->eos_tok; }
const nlohmann::json& Tokenizer::config() const { return impl_->config; }
std::string Tokenizer::chat_template() const {
  const json& c = impl_->config;
  if (!c.contains("chat_template")) return {};
  const json& t = c["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())  // [{name, template}, ...]: the "default" one
    for (const auto& x : t)
      if (x.value("name", "") == "default") return x.value("template", "");
  return {};
}
std::string Tokenizer::tokenizer_class() const { return impl_->config.value("tokenizer_class", ""); }
bool Tokenizer::byte_level() const { return impl_->byte_level; }

}  // namespace aloepri
