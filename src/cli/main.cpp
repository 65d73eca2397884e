// The `aloepri` command: dispatches to the subcommands registered in src/cli/cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "aloepri/core/error.h"
#include "aloepri/core/progress.h"
#include "command.h"

namespace aloepri::cli {

std::vector<CommandInfo>& command_registry() {
  static std::vector<CommandInfo> r;
  return r;
}

std::vector<int64_t> parse_ids_csv(const std::string& csv) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i <= csv.size()) {
    size_t j = csv.find(',', i);
    if (j == std::string::npos) j = csv.size();
    std::string tok = csv.substr(i, j - i);
    tok.erase(0, tok.find_first_not_of(" \t"));
    tok.erase(tok.find_last_not_of(" \t") + 1);
    if (!tok.empty()) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(tok, &used);
      } catch (...) {
        used = 0;
      }
      if (used != tok.size() || v < 0) throw Error("--ids", "not a token id: '" + tok + "'", kExitUsage);
      ids.push_back(v);
    }
    i = j + 1;
  }
  if (ids.empty()) throw Error("--ids", "no token ids given", kExitUsage);
  return ids;
}

}  // namespace aloepri::cli

static const char* kExitCodes =
    "Exit codes:\n"
    "  0  success\n"
    "  1  runtime failure (I/O, engine, internal error)\n"
    "  2  bad command line (unknown option, missing argument)\n"
    "  3  malformed or unsupported input (model, config, tokenizer, GGUF)\n"
    "  4  output exists; refusing to overwrite (use --force where offered)\n"
    "  5  key problem (wrong model, permissions, version)\n";

int main(int argc, char** argv) {
  using namespace aloepri;
  CLI::App app{"aloepri: privacy-preserving LLM inference by covariant obfuscation (AloePri).\n"
               "Obfuscate an open-weight model once with a secret key; serve it with any engine;\n"
               "send permuted token ids and map the answers back."};
  app.set_version_flag("--version", std::string("aloepri ") + ALOEPRI_VERSION);
  app.footer(kExitCodes);
  app.require_subcommand(1);
  bool quiet = false;
  app.add_flag("-q,--quiet", quiet, "No progress bars");

  auto& reg = cli::command_registry();
  std::sort(reg.begin(), reg.end(), [](auto& a, auto& b) { return a.order < b.order; });
  std::function<int()> to_run;
  for (auto& c : reg) {
    CLI::App* sub = app.add_subcommand(c.name, c.description);
    sub->footer(kExitCodes);
    auto fn = c.setup(*sub);
    sub->callback([fn, &to_run] { to_run = fn; });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  Progress::set_enabled(!quiet);
  try {
    return to_run ? to_run() : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "aloepri: error: %s\n", e.what());
    return e.code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aloepri: error: %s\n", e.what());
    return kExitError;
  }
}
