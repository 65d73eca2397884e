// The audit runner behind `aloepri audit`: a registry of attacks (weight attacks here; the
// token-stream attacks of audit/stream_attacks.h and an external learned-attack binary plug in the same
// way), a time budget, a console table, and the JSON / self-contained HTML report.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/audit/grouped_served.h"
#include "aloepri/audit/metrics.h"
#include "aloepri/audit/oracle.h"
#include "aloepri/audit/weights.h"

namespace aloepri::audit {

// Everything an attack may read. The truth (tau) is for scoring only: attacks receive the
// traffic (obfuscated ids) and the models, and return AttackResults that the runner scores by
// calling score() with their guesses, or score themselves with `truth` in their own module.
struct AuditContext {
  std::string plain_dir, obf_dir;
  Mechanism mech;                        // public parameters the attacker knows
  nlohmann::json params;                 // the full public parameter record (JSON), if known
  std::vector<int32_t> traffic;          // obfuscated token ids the server observed
  std::vector<int32_t> victim;           // their plaintext ids (empty without a key)
  std::vector<int32_t> vocab_sample;     // plaintext ids for vocabulary-level recovery (key only)
  std::optional<std::vector<int64_t>> truth;  // tau[plain] = obf, from the key: scoring only
  // A homophonic served model (n' > n): the weight attacks run on the copies grouped from the
  // served weights (grouped()); traffic holds the copies the client sent, truth is copy 0 of each
  // id, and scores read the sent copy.
  bool homophonic = false;
  std::string key_path;  // passed only to external programs that play the client (and score)
  WeightAttackOptions weight_opt;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // Lazily loaded models (shared by the weight attacks).
  const ModelWeights& plain() const;
  const ModelWeights& obf() const;
  Query query() const;  // distinct traffic ids (+ tau(vocab_sample) when scoring)
  // A homophonic served model with its copies grouped (audit/grouped_served.h), made once.
  const GroupedServed& grouped() const;
  double seconds_left() const;

 private:
  void load_models() const;  // both at once: a MoE pair needs both (load_weight_pair)
  mutable std::shared_ptr<ModelWeights> plain_, obf_;
  mutable std::shared_ptr<GroupedServed> grouped_;
};

// Scores a vocabulary attack on the context (TTRSR on victim, top-k, vocabulary recovery, BLEU,
// cosine); without a truth only the guesses for the first traffic tokens are reported.
AttackResult score_in_context(const VocabAttack& a, const AuditContext& ctx, const std::string& setting);

struct AttackEntry {
  std::string name;         // as named in --attacks: "vma", "gate-ia", "attn-ia", "nn", ...
  std::string family;       // "weights" | "stream" | "learned"
  std::string description;
  std::function<std::vector<AttackResult>(const AuditContext&)> run;
};

// The built-in weight attacks, in running order; callers append others (stream attacks, an
// external learned-attack binary) before running.
std::vector<AttackEntry> weight_attacks();
// DeepSeek only (audit/mla_latent.h): the latent maps and head permutations recovered from the
// weights; scored against the key's maps when the context has a key.
AttackEntry mla_latent_entry();
// Qwen3 / Qwen3-MoE only (audit/qk_gains.h): the shared pair map and scales read off the q/k gains
// (attacker-side figures; scored against the key in tests/qk_gains_test.cpp).
AttackEntry qk_gains_entry();
// The oracle attack (audit/oracle.h) with the given budget options; it runs both models.
AttackEntry oracle_entry(const OracleOptions& opt);
// "oracle-nn": NN on the weights first, then the oracle with NN's unambiguous matches as seeds
// (the strongest model attacker: each covers where the other fails to start).
AttackEntry oracle_nn_entry(const OracleOptions& opt);
// An attack run by an external program (e.g. `aloe-attack isa --json`) that prints a JSON
// AttackResult object or array (the fields of AttackResult::to_json) on stdout. The command line
// is exe + args + --plain P --obf O (+ --key K when the audit has one: such programs play the
// client with it to make their own victim traffic, and score).
AttackEntry external_attack(const std::string& name, const std::string& exe, const std::vector<std::string>& args);

// The report's goals (method.md section 8 / issue 5): maximum TTRSR per attack (TFMA: top-100),
// or nullopt when the issue sets none.
std::optional<double> goal_for(const std::string& attack);

struct AuditRun {
  std::vector<AttackResult> results;
  nlohmann::json skipped = nlohmann::json::array();  // {attack, reason}
  nlohmann::json meta;                                // models, params, budget, machine, date
};

// Runs the entries named in `names` (all when empty) in order, skipping those left when the
// budget is spent; an attack that throws is recorded in `skipped` with its message.
AuditRun run_audit(const std::vector<AttackEntry>& entries, const std::vector<std::string>& names,
                   const AuditContext& ctx);

nlohmann::json audit_json(const AuditRun& run);
std::string audit_table(const AuditRun& run);  // fixed-width console table
// A self-contained HTML page: table, inline SVG bar charts (per attack against its goal, VMA per
// weight pair, NN per component), recovered-text samples. No external resources.
std::string audit_html(const AuditRun& run);
// Inline SVG line chart (x numeric) with one series per name; exposed for sweep reports.
std::string svg_line_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                           const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series,
                           bool log_y = false);

}  // namespace aloepri::audit
