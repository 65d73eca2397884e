// Decoding, full and streaming. Tokenizer::decode() is the streaming decoder run over all ids, so
// the two agree by construction; the parity test checks decode() against transformers.js.
//
// Decoder semantics (transformers.js): ByteLevel maps token characters back to bytes and decodes
// them as UTF-8 with replacement (runs between added tokens separately, which for valid added
// tokens is the same as one stream). The SentencePiece chain applies Replace("▁" -> " ") to each
// piece, turns runs of <0xXX> tokens into text with a TextDecoder (replacement, and a BOM at the
// start of a run is dropped), concatenates (Fuse) and removes up to `start` leading spaces (Strip).
// clean_up_tokenization_spaces then applies the " ." -> "." style replacements.
#include "aloepri/core/error.h"
#include "tokenizer_impl.h"

namespace aloepri {

std::string clean_up_tokenization(std::string_view text) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  std::string s(text);
  for (const auto& [from, to] : kRules) {
    std::string_view f(from);
    if (s.find(f) == std::string::npos) continue;
    std::string out;
    size_t i = 0;
    for (size_t p; (p = s.find(f, i)) != std::string::npos; i = p + f.size()) {
      out.append(s, i, p - i);
      out += to;
    }
    out.append(s, i, std::string::npos);
    s = std::move(out);
  }
  return s;
}

IncrementalDecoder Tokenizer::decoder(const DecodeOptions& opt) const { return IncrementalDecoder(impl_, opt); }

std::string Tokenizer::decode(std::span<const int32_t> ids, const DecodeOptions& opt) const {
  IncrementalDecoder d(impl_, opt);
  std::string out = d.push(ids);
  out += d.finish();
  return out;
}

IncrementalDecoder::IncrementalDecoder(std::shared_ptr<const Tokenizer::Impl> impl, const DecodeOptions& opt)
    : impl_(std::move(impl)) {
  skip_special_ = opt.skip_special;
  cleanup_ = opt.cleanup.value_or(impl_->cleanup_default);
  strip_left_ = impl_->dec_strip_start;
}

// WHATWG UTF-8 decoder, streaming: complete characters go to out_, an incomplete one waits.
void IncrementalDecoder::feed(std::string_view bytes) {
  static const char kFFFD[] = "\xEF\xBF\xBD";
  for (size_t i = 0; i < bytes.size();) {
    unsigned char b = bytes[i];
    if (need_ == 0) {
      ++i;
      if (b < 0x80) {
        out_ += char(b);
      } else if (b >= 0xC2 && b <= 0xDF) {
        need_ = 1, partial_.assign(1, char(b));
      } else if (b >= 0xE0 && b <= 0xEF) {
        lo_ = b == 0xE0 ? 0xA0 : 0x80, hi_ = b == 0xED ? 0x9F : 0xBF, need_ = 2, partial_.assign(1, char(b));
      } else if (b >= 0xF0 && b <= 0xF4) {
        lo_ = b == 0xF0 ? 0x90 : 0x80, hi_ = b == 0xF4 ? 0x8F : 0xBF, need_ = 3, partial_.assign(1, char(b));
      } else {
        out_ += kFFFD;
      }
      continue;
    }
    if (b < lo_ || b > hi_) {  // broken sequence: one U+FFFD, then this byte starts afresh
      out_ += kFFFD;
      need_ = 0, lo_ = 0x80, hi_ = 0xBF;
      partial_.clear();
      continue;
    }
    ++i;
    lo_ = 0x80, hi_ = 0xBF;
    partial_ += char(b);
    if (--need_ == 0) {
      out_ += partial_;
      partial_.clear();
    }
  }
}

void IncrementalDecoder::end_run() {
  if (head_open_) feed(run_head_);
  head_open_ = false;
  in_byte_run_ = false;
  // Each run has its own TextDecoder in transformers.js: an unfinished character ends here.
  if (need_ > 0) {
    out_ += "\xEF\xBF\xBD";
    need_ = 0, lo_ = 0x80, hi_ = 0xBF;
    partial_.clear();
  }
}

std::string IncrementalDecoder::push(std::span<const int32_t> ids) {
  std::string r;
  for (int32_t id : ids) r += push(id);
  return r;
}

std::string IncrementalDecoder::push(int32_t id) {
  const Tokenizer::Impl& m = *impl_;
  if (id < 0 || size_t(id) >= m.id_token.size() || (m.id_token[id].empty() && !(m.id_flags[id] & 1)))
    throw Error("decode", "token id " + std::to_string(id) + " is not in the vocabulary (size " +
                              std::to_string(m.id_token.size()) + ")", kExitBadInput);
  if (skip_special_ && m.special_ids.count(id)) return {};
  if (m.dec == Tokenizer::Impl::Dec::kByteLevel) {
    feed(m.id_bytes[id]);
    return take(false);
  }
  int b = m.id_byte[id];
  if (m.dec_byte_fallback && b >= 0) {
    if (!in_byte_run_) {
      in_byte_run_ = true;
      head_open_ = true;
      run_head_.clear();
    }
    if (head_open_) {
      static const std::string kBom = "\xEF\xBB\xBF";
      run_head_ += char(b);
      if (kBom.compare(0, run_head_.size(), run_head_) != 0) {
        feed(run_head_);
        head_open_ = false;
      } else if (run_head_.size() == 3) {
        head_open_ = false;  // TextDecoder drops a BOM at the start of its input
      }
    } else {
      char c = char(b);
      feed(std::string_view(&c, 1));
    }
    first_token_ = false;
    return take(false);
  }
  if (in_byte_run_) end_run();
  std::string piece = m.id_token[id];
  for (const auto& [from, to] : m.dec_replace) {
    std::string outp;
    size_t i = 0;
    for (size_t p; (p = piece.find(from, i)) != std::string::npos; i = p + from.size()) {
      outp.append(piece, i, p - i);
      outp += to;
    }
    if (i == 0) continue;
    outp.append(piece, i, std::string::npos);
    piece = std::move(outp);
  }
  if (m.dec_metaspace_first && first_token_ && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  first_token_ = false;
  feed(piece);
  return take(false);
}

std::string IncrementalDecoder::finish() {
  if (in_byte_run_) end_run();
  if (need_ > 0) {  // TextDecoder at end of input
    out_ += "\xEF\xBF\xBD";
    need_ = 0, lo_ = 0x80, hi_ = 0xBF;
    partial_.clear();
  }
  return take(true);
}

std::string IncrementalDecoder::take(bool final) {
  // The Strip decoder removes up to `start` leading spaces of the whole text.
  while (strip_left_ > 0 && !out_.empty()) {
    if (out_[0] == ' ') {
      out_.erase(0, 1);
      --strip_left_;
    } else {
      strip_left_ = 0;
    }
  }
  if (!cleanup_) return std::exchange(out_, std::string());
  if (final) {
    std::string r = clean_up_tokenization(out_);
    out_.clear();
    return r;
  }
  // Clean-up patterns are at most 4 bytes and start with a space: text before a cut with no space
  // in the 3 bytes before it is final (no pattern can straddle the cut).
  size_t c = out_.size();
  while (c > 0) {
    bool ok = c == out_.size() || (static_cast<unsigned char>(out_[c]) & 0xC0) != 0x80;
    for (size_t k = 1; k <= 3 && ok; ++k)
      if (c >= k && out_[c - k] == ' ') ok = false;
    if (ok) break;
    --c;
  }
  std::string r = clean_up_tokenization(std::string_view(out_).substr(0, c));
  out_.erase(0, c);
  return r;
}

}  // namespace aloepri
