#include "support/llamacpp.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "support/paths.h"

namespace fs = std::filesystem;

namespace aloepri::testing {

std::string harness_dir() { return source_dir() + "/harness/llamacpp"; }

bool harness_installed(std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (run_command("node --version > /dev/null 2>&1") != 0) return fail("node is not on PATH");
  const std::string nm = harness_dir() + "/node_modules";
  if (!fs::exists(nm + "/node-llama-cpp/package.json"))
    return fail("node-llama-cpp is not installed in " + nm +
                " (run: cd harness/llamacpp && npm install --omit=optional)");
  if (!fs::exists(nm + "/@node-llama-cpp/linux-x64/package.json"))
    return fail("@node-llama-cpp/linux-x64 (prebuilt llama.cpp) is not installed in " + nm);
  return true;
}

std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) {
    if (c == '\'') r += "'\\''";
    else r += c;
  }
  return r + "'";
}

namespace {

std::string ids_csv(const std::vector<int64_t>& ids) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? "," : "") << ids[i];
  return s.str();
}

std::vector<double> doubles(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) throw std::runtime_error(where + ": expected an array of numbers");
  std::vector<double> v;
  v.reserve(j.size());
  for (const auto& x : j) {
    if (!x.is_number()) throw std::runtime_error(where + ": non-numeric entry");
    v.push_back(x.get<double>());
  }
  return v;
}

std::vector<int64_t> ints(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) throw std::runtime_error(where + ": expected an array of integers");
  std::vector<int64_t> v;
  for (const auto& x : j) {
    if (!x.is_number_integer()) throw std::runtime_error(where + ": non-integer entry");
    v.push_back(x.get<int64_t>());
  }
  return v;
}

EngineOutput run_json(const std::string& cmd, const std::string& what) {
  std::string out;
  // stderr is left to the test's own stderr (shown by ctest on failure).
  int rc = run_command(cmd, &out);
  if (rc != 0) throw std::runtime_error(what + " failed with exit status " + std::to_string(rc) + ": " + cmd);
  return parse_engine_json(out, what);
}

}  // namespace

EngineOutput parse_engine_json(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error(what + ": output is not JSON (" + e.what() + "): " + text.substr(0, 200));
  }
  for (const char* k : {"engine", "model", "ids", "vocab_size", "last_logits", "greedy"})
    if (!j.contains(k)) throw std::runtime_error(what + ": JSON lacks field '" + k + "'");
  EngineOutput o;
  o.engine = j["engine"].get<std::string>();
  o.model = j["model"].get<std::string>();
  o.ids = ints(j["ids"], what + ".ids");
  o.vocab_size = j["vocab_size"].get<int64_t>();
  o.last_logits = doubles(j["last_logits"], what + ".last_logits");
  o.greedy = ints(j["greedy"], what + ".greedy");
  if (static_cast<int64_t>(o.last_logits.size()) != o.vocab_size)
    throw std::runtime_error(what + ": last_logits has " + std::to_string(o.last_logits.size()) +
                             " entries, vocab_size is " + std::to_string(o.vocab_size));
  if (j.contains("logits")) {
    const auto& rows = j["logits"];
    if (!rows.is_array()) throw std::runtime_error(what + ".logits: expected an array of rows");
    for (size_t t = 0; t < rows.size(); ++t) {
      o.logits.push_back(doubles(rows[t], what + ".logits[" + std::to_string(t) + "]"));
      if (static_cast<int64_t>(o.logits.back().size()) != o.vocab_size)
        throw std::runtime_error(what + ".logits[" + std::to_string(t) + "]: wrong length");
    }
  }
  return o;
}

EngineOutput run_harness_eval(const std::string& gguf, const std::vector<int64_t>& ids, int64_t greedy,
                              bool all_logits) {
  std::string cmd = "node " + shell_quote(harness_dir() + "/eval.mjs") + " --model " + shell_quote(gguf) +
                    " --ids " + ids_csv(ids) + " --threads 1";
  if (greedy > 0) cmd += " --greedy " + std::to_string(greedy);
  if (all_logits) cmd += " --all-logits";
  return run_json(cmd, "eval.mjs on " + gguf);
}

EngineOutput run_reference_forward(const std::string& model_dir, const std::vector<int64_t>& ids,
                                   int64_t greedy, bool all_logits) {
  std::string cmd = shell_quote(aloepri_exe()) + " forward " + shell_quote(model_dir) + " --ids " + ids_csv(ids) +
                    " --json";
  if (greedy > 0) cmd += " --greedy " + std::to_string(greedy);
  if (all_logits) cmd += " --all-logits";
  return run_json(cmd, "aloepri forward on " + model_dir);
}

LogitDiff compare_logits(const std::vector<std::vector<double>>& test,
                         const std::vector<std::vector<double>>& reference) {
  if (test.size() != reference.size())
    throw std::runtime_error("compare_logits: " + std::to_string(test.size()) + " vs " +
                             std::to_string(reference.size()) + " positions");
  LogitDiff d;
  d.rel = -1;
  for (size_t t = 0; t < test.size(); ++t) {
    const auto& a = test[t];
    const auto& b = reference[t];
    if (a.size() != b.size()) throw std::runtime_error("compare_logits: row " + std::to_string(t) + " lengths differ");
    double md = 0, ml = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      // A NaN anywhere must fail the comparison, not vanish in std::max.
      const double diff = std::fabs(a[i] - b[i]);
      md = std::isnan(diff) ? INFINITY : std::max(md, diff);
      ml = std::max(ml, std::fabs(b[i]));
    }
    const double rel = ml > 0 ? md / ml : (md > 0 ? INFINITY : 0);
    if (rel > d.rel) d = {md, ml, rel, static_cast<int64_t>(t)};
  }
  if (d.rel < 0) d.rel = 0;
  return d;
}

}  // namespace aloepri::testing
