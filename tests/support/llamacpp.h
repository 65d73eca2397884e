// Running the llama.cpp harness's eval.mjs (harness/llamacpp, under Node) and the reference CLI
// from tests, and comparing what they print (server.mjs is started by aloepri::EngineProcess). Both print the same JSON object:
//   {"engine","model","ids","vocab_size","last_logits","greedy"[,"logits"]}
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace aloepri::testing {

std::string harness_dir();  // <source>/harness/llamacpp
// True when node and the harness's pinned npm packages are installed; otherwise *why says what
// is missing (tests GTEST_SKIP with it).
bool harness_installed(std::string* why = nullptr);

// Single-quotes s for /bin/sh.
std::string shell_quote(const std::string& s);

struct EngineOutput {
  std::string engine, model;
  std::vector<int64_t> ids;
  int64_t vocab_size = 0;
  std::vector<double> last_logits;
  std::vector<int64_t> greedy;
  std::vector<std::vector<double>> logits;  // empty unless all_logits
};

// Parses the JSON object; throws std::runtime_error naming `what` and the bad field.
EngineOutput parse_engine_json(const std::string& json, const std::string& what);

// `node eval.mjs --model GGUF --ids ... [--greedy N] [--all-logits]` (1 thread).
EngineOutput run_harness_eval(const std::string& gguf, const std::vector<int64_t>& ids, int64_t greedy,
                              bool all_logits);
// `aloepri forward MODEL_DIR --ids ... [--greedy N] [--all-logits] --json`.
EngineOutput run_reference_forward(const std::string& model_dir, const std::vector<int64_t>& ids,
                                   int64_t greedy, bool all_logits);

// max_t max_i |a_ti - b_ti| / max_t max_i |b_ti| is what the acceptance bound uses per position;
// this holds the worst position's figures.
struct LogitDiff {
  double max_abs_diff = 0;   // at the worst position
  double max_abs_logit = 0;  // max |reference logit| at that position
  double rel = 0;            // max over positions of max_abs_diff / max_abs_logit
  int64_t worst_position = -1;
};
// Rows of equal length; `test` vs `reference`. Throws on a shape mismatch.
LogitDiff compare_logits(const std::vector<std::vector<double>>& test,
                         const std::vector<std::vector<double>>& reference);

}  // namespace aloepri::testing
