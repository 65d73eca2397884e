// Shared vocabulary of the privacy audit: what every attack reports and the metrics that score
// a recovery. Each attack lives in its own module (audit_*.h) and returns AttackResult; the
// `aloepri audit` command runs them and writes the table, JSON and HTML.
//
// The attacker (method.md section 9 / issue 5) knows the plaintext model, the obfuscated model,
// the mechanism and its parameters, and what the server observes; never the seed. The key is
// used only to SCORE an attack (to know the true permutation), never by it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace aloepri::audit {

// A guess, per obfuscated token id, of the plaintext token id, best first (k candidates).
// candidates[obf_id] = {plain_id_best, plain_id_2nd, ...}; empty = no guess.
using Guesses = std::vector<std::vector<int32_t>>;

struct AttackResult {
  std::string attack;        // "VMA", "Gate-IA", "Attn-IA", "NN", "ISA", "IMA", "TFMA", "SDA"
  std::string setting;       // e.g. "default params", "prior: same distribution"
  // Token-level recovery on the victim text (TTRSR: fraction of victim tokens whose top-1
  // recovered plaintext id is right), and top-k variants when the attack ranks candidates.
  double ttrsr = 0.0;
  std::vector<std::pair<int, double>> topk;  // (k, fraction of victim tokens with the truth in top k)
  // Vocabulary-level recovery (fraction of vocabulary ids recovered), when meaningful.
  double vocab_recovery = -1.0;
  double pii_recovery = -1.0;  // fraction of PII tokens recovered (-1 = not measured)
  double bleu4 = -1.0;         // recovered vs true text
  double cosine = -1.0;        // cosine similarity of recovered vs true text (bag of tokens)
  double seconds = 0.0;        // wall time of the attack
  int64_t victim_tokens = 0;
  nlohmann::json details;      // attack-specific figures
  nlohmann::json to_json() const;
};

// Scoring helpers (implemented in src/audit/metrics.cpp).
// fraction of positions where recovered[i] == truth[i]
double token_recovery(const std::vector<int32_t>& recovered, const std::vector<int32_t>& truth);
// BLEU-4 (uniform weights, brevity penalty, add-1 smoothing on higher orders) of a token sequence
double bleu4(const std::vector<int32_t>& hypothesis, const std::vector<int32_t>& reference);
// cosine similarity of the token-count vectors of two sequences
double bag_cosine(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

}  // namespace aloepri::audit
