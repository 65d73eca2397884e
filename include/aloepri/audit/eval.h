// Accuracy audit (issue 6): how much an obfuscated model loses against its plaintext model on
// held-out text, on the reference forward and on llama.cpp, and where the error enters.
//
// Figures per engine: next-token top-1 accuracy of each model (the obfuscated one scored after
// tau^-1, i.e. its logits read at tau(y)), relative accuracy loss, perplexity of each, mean and
// max KL(plain || obf) per position, top-1 agreement, greedy-continuation agreement.
// Where the error enters (reference forward only): the relative error of the residual stream
// after the embedding and after each layer, ||x~ Q - x|| / ||x|| with Q a reader instance of the
// key matrices re-derived from the key's seed and recorded parameters; attributed to noise, norm
// (key matrices / kappa), RoPE block permutation and storage precision by re-obfuscating with the
// same seed and only one ingredient switched on (each alone), plus the full setting in f32.
//
// Sweeps: each point is one eval JSON (its "params" object says what was measured); frontier()
// joins points with the privacy audit's attack figures (by parameters) when they are given.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/engine/forward.h"
#include "aloepri/obfuscate/executor.h"

namespace aloepri::eval {

// Held-out tokens: a .bin file of uint16 little-endian ids (tools/corpus's heldout.bin) is read
// as is; any other file is text, tokenized with the tokenizer in model_dir (BOS added).
std::vector<int64_t> load_tokens(const std::string& path, const std::string& model_dir);
// ceil(total / window) windows of `window` tokens (window - 1 scored targets each), spread
// evenly over ids (so a corpus made of several sources is sampled across all of them).
std::vector<std::vector<int64_t>> spread_windows(const std::vector<int64_t>& ids, int64_t total, int64_t window);

// Accumulates next-token figures from pairs of logit rows (plain row, obfuscated row read through
// tau) and the plaintext target. Over a homophonic vocabulary (homophones.h) the obfuscated row
// has n' logits and plaintext id y gets the merged probability of its copies,
// sum_c p'(id(y, c)) (what a client that maps every copy back receives when it samples from the
// served distribution); `corrected` divides it by c_y and renormalises, i.e. adds -log c_y to
// every copy's logit, the exact correction of duplicated head columns.
class ScoreAccumulator {
 public:
  explicit ScoreAccumulator(const std::vector<int64_t>& tau) : map_(VocabMap::from_tau(tau)) {}
  ScoreAccumulator(VocabMap map, bool corrected) : map_(std::move(map)), corrected_(corrected) {}
  // plain: n logits; obf: n' logits (indexed by obfuscated id); target: plaintext next id or -1
  // (no target: only KL and agreement count).
  void add(const double* plain, const double* obf, int64_t target);
  void add_greedy(const std::vector<int64_t>& plain, const std::vector<int64_t>& obf_mapped);
  nlohmann::json to_json() const;
  double kl_mean() const { return positions_ ? kl_sum_ / double(positions_) : 0; }
  double top1_agreement() const { return positions_ ? double(agree_) / double(positions_) : 0; }
  double rel_loss() const;

 private:
  VocabMap map_;
  bool corrected_ = false;
  std::vector<double> merged_;  // scratch: the obfuscated row as n plaintext logits
  int64_t positions_ = 0, targets_ = 0, hit_plain_ = 0, hit_obf_ = 0, agree_ = 0;
  double nll_plain_ = 0, nll_obf_ = 0, kl_sum_ = 0, kl_max_ = 0;
  int64_t greedy_total_ = 0, greedy_equal_ = 0, greedy_runs_ = 0;
  double first_div_sum_ = 0;
};

struct EvalConfig {
  std::string plain_dir, obf_dir, key_path;
  // The checkpoint that was obfuscated, when it is not plain_dir: a noise-adapted copy of the
  // plaintext model (tools/train/adapt.cpp). The key's record must name it; plain_dir stays the
  // model the user compares against; attribution variants re-obfuscate obf_source.
  std::string obf_source;
  std::vector<std::string> engines{"reference"};  // "reference", "llamacpp"
  std::string text_file;                           // held-out text or .bin ids
  int64_t tokens = 2048, window = 256;             // scored positions in total, per window
  int64_t greedy_tokens = 32, greedy_prompts = 4, prompt_len = 16;
  bool attribution = true;     // re-obfuscate per ingredient (needs the plaintext model + key)
  std::string work_dir;        // scratch (re-obfuscations, GGUF exports); created, removed after
  std::string engine_dir;      // llama.cpp harness; default aloepri::default_engine_dir()
  int64_t llamacpp_tokens = 1024;  // fewer positions for llama.cpp (each window is a process)
  std::function<void(const std::string&)> log;  // progress lines (may be empty)
};

// The whole report: {"params", "model", "obf_model", "tokens", "engines": {name: scores},
// "layers": [{name, params, rel_err[L+1], kl_mean, top1_agreement}], "seconds"}.
nlohmann::json run_eval(const EvalConfig& cfg);

// Scores plain vs obfuscated reference models on windows (used by run_eval; exposed for tests).
// layer_err_out (if given) receives L+1 mean relative residual errors read back through Q
// (d' x d row-major); Q empty skips them.
// Over a homophonic map the obfuscated side is fed one copy per token (a fixed public stream, so
// runs repeat) and the report adds "homophone_corrected" (scores with the -log c correction).
nlohmann::json score_reference(ReferenceModel& plain, ReferenceModel& obf, const VocabMap& map,
                               const std::vector<std::vector<int64_t>>& windows, int64_t greedy_prompts,
                               int64_t prompt_len, int64_t greedy_tokens, const std::vector<double>& Q,
                               std::vector<double>* layer_err_out);

// ObfuscationParams back from ObfuscationParams::to_json() (missing fields keep defaults).
ObfuscationParams params_from_json(const nlohmann::json& j);

// Self-contained HTML (inline SVG, no scripts) for one eval report.
std::string render_html(const nlohmann::json& report);

// Frontier: points are eval reports (each with "params" and "engines"); attacks (may be null) is
// the audit's JSON: an object or array of objects each with "params" and "attacks"
// [{attack, ttrsr, ...}] (or "results"), or a directory's worth already concatenated. Points
// and attack entries are joined on lambda, expansion, alpha_e, alpha_h, beta, keymat and
// noise_scale (numbers within 1e-9). Output: {"points": [...with "loss", "worst_attack"...],
// "frontier": [indices on the Pareto front], "goal": {...}}.
// exclude: attack names (as in "attack") left out of the worst-attack figure, e.g. {"NN"} to see
// the frontier of the attacks the noise level controls.
nlohmann::json frontier(const std::vector<nlohmann::json>& points, const nlohmann::json& attacks,
                        const std::vector<std::string>& exclude = {});
std::string render_frontier_html(const nlohmann::json& frontier_report);

}  // namespace aloepri::eval
