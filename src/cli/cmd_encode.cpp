// `aloepri encode` / `aloepri decode`: map token ids through tau / tau^-1.
#include <iostream>

#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "command.h"

namespace {

struct Opts {
  std::string key, ids, model;
  bool json = false;
};

void add_options(CLI::App& sub, Opts& o) {
  sub.add_option("--key", o.key, "Key file used for `aloepri obfuscate`")->required();
  sub.add_option("--ids", o.ids, "Comma-separated token ids")->required();
  sub.add_option("--model", o.model,
                 "Check that the key belongs to this model dir (plaintext or obfuscated) first");
  sub.add_flag("--json", o.json, "Print {\"ids\": [...]} instead of CSV");
}

int run(const Opts& o, bool inverse) {
  using namespace aloepri;
  KeyFile key = KeyFile::load(o.key);
  const auto& rec = key.require_record(o.key);
  if (!o.model.empty()) check_key_matches_model(key, o.key, HFModel(o.model).fingerprint(), o.model);
  auto ids = cli::parse_ids_csv(o.ids);
  // tau, or the homophonic map: encode sends a copy drawn from the OS CSPRNG per occurrence
  // (as the proxy does), decode maps every copy back.
  const VocabMap map = rec.vocab_map(key.seed);
  const int64_t limit = inverse ? map.size() : map.plain_size();
  std::vector<int64_t> out;
  for (auto id : ids) {
    if (id < 0 || id >= limit)
      throw Error("--ids", "token id " + std::to_string(id) + " is outside the vocabulary of the model this key was made for (" +
                               (inverse ? "obfuscated" : "plaintext") + " ids, size " + std::to_string(limit) + ")",
                  kExitKeyMismatch);
    if (inverse) {
      out.push_back(map.plain(id));
    } else {
      const int64_t k = map.copies(id);
      out.push_back(map.id(id, k > 1 ? int64_t(random_below(uint32_t(k))) : 0));
    }
  }
  if (o.json) {
    std::cout << nlohmann::json{{"ids", out}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? "," : "") << out[i];
    std::cout << "\n";
  }
  return 0;
}

auto setup_encode(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_options(sub, *o);
  sub.footer("Maps plaintext token ids to the obfuscated ids the server sees (tau).");
  return [o] { return run(*o, false); };
}
auto setup_decode(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_options(sub, *o);
  sub.footer("Maps obfuscated token ids from the server back to plaintext ids (tau^-1).");
  return [o] { return run(*o, true); };
}
}  // namespace
ALOEPRI_COMMAND(encode, "encode", 30, "Map plaintext token ids to obfuscated ids (tau)", setup_encode);
ALOEPRI_COMMAND(decode, "decode", 31, "Map obfuscated token ids back to plaintext ids (tau^-1)", setup_decode);
