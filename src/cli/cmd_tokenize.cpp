// `aloepri tokenize` / `aloepri detokenize`: the client's tokenizer on the command line.
#include <iostream>
#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "aloepri/client/tokenizer.h"
#include "command.h"

namespace {

auto setup_tokenize(CLI::App& sub) {
  struct Opts {
    std::string tokenizer, text, file;
    bool add_special = false, json = false;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("--tokenizer", o->tokenizer, "Model directory or tokenizer.json")->required();
  auto* t = sub.add_option("--text", o->text, "Text to encode (UTF-8)");
  auto* f = sub.add_option("--file", o->file, "File whose contents to encode");
  t->excludes(f);
  sub.add_flag("--add-special", o->add_special, "Add the post-processor's special tokens (e.g. BOS)");
  sub.add_flag("--json", o->json, "Print {\"ids\":[...],\"count\":N} instead of comma-separated ids");
  return [o, t, f] {
    if (t->count() == 0 && f->count() == 0) throw aloepri::Error("tokenize", "give --text or --file", aloepri::kExitUsage);
    auto tok = aloepri::Tokenizer::load(o->tokenizer);
    std::string text = f->count() ? aloepri::read_file(o->file) : o->text;
    std::vector<int32_t> ids = tok.encode(text, o->add_special);
    if (o->json) {
      nlohmann::json j = {{"ids", ids}, {"count", ids.size()}};
      std::cout << j.dump() << "\n";
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? "," : "") << ids[i];
      std::cout << "\n";
    }
    return 0;
  };
}

auto setup_detokenize(CLI::App& sub) {
  struct Opts {
    std::string tokenizer, ids;
    bool json = false, skip_special = false;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("--tokenizer", o->tokenizer, "Model directory or tokenizer.json")->required();
  sub.add_option("--ids", o->ids, "Comma-separated token ids")->required();
  sub.add_flag("--skip-special", o->skip_special, "Leave special tokens out of the text");
  sub.add_flag("--json", o->json, "Print {\"text\":...} instead of the raw text");
  return [o] {
    auto tok = aloepri::Tokenizer::load(o->tokenizer);
    std::vector<int32_t> ids;
    for (int64_t v : aloepri::cli::parse_ids_csv(o->ids)) {
      if (v > INT32_MAX) throw aloepri::Error("--ids", "token id " + std::to_string(v) + " is out of range", aloepri::kExitUsage);
      ids.push_back(int32_t(v));
    }
    aloepri::DecodeOptions opt;
    opt.skip_special = o->skip_special;
    std::string text = tok.decode(ids, opt);
    if (o->json)
      std::cout << nlohmann::json({{"text", text}}).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    else
      std::cout << text << "\n";
    return 0;
  };
}

}  // namespace

ALOEPRI_COMMAND(tokenize, "tokenize", 60, "Encode text to token ids with a Hugging Face tokenizer", setup_tokenize);
ALOEPRI_COMMAND(detokenize, "detokenize", 61, "Decode token ids to text with a Hugging Face tokenizer", setup_detokenize);
