// Shared pieces of the learned attacks (ISA, IMA): token files, victim windows, what the
// server observes, scoring and the AttackResult JSON (include/aloepri/audit.h field names).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/audit/metrics.h"
#include "aloepri/formats/token_file.h"
#include "torch_model/llama.h"

namespace aloepri::attacks {

// The plaintext and obfuscated models run in the shared libtorch module (tools/torch_model).
using torch_model::Llama;
using torch_model::Trace;

// Token files (build/corpus/{train,heldout}.bin): aloepri::read_token_file (aloepri/token_file.h).

// `count` non-overlapping windows of `seq` tokens spread evenly over the stream (window i
// starts at token (i * total / count) * seq, total = number of whole windows).
// Returns [count, seq] int64. Throws when the stream is too short or an id is >= vocab.
torch::Tensor spread_windows(const std::vector<uint16_t>& ids, int64_t count, int64_t seq, int64_t vocab,
                             const std::string& where);
// `count` windows at pseudo-random offsets (deterministic in seed) for training data.
torch::Tensor random_windows(const std::vector<uint16_t>& ids, int64_t count, int64_t seq, int64_t vocab,
                             uint64_t seed, const std::string& where);

// ids mapped through a permutation (tau[plain] = obfuscated).
torch::Tensor map_ids(const torch::Tensor& ids, const std::vector<int64_t>& tau);

// What the server sees when it runs `model` on `ids` [B, T]:
//   target "hidden": residual stream after layer `layer` ([B, T, d]; layer -1 = the embedding rows);
//   target "attn":   pre-softmax attention scores of layer `layer` ([B, H, T, T], masked = 0).
torch::Tensor observe(const Llama& model, const torch::Tensor& ids, const std::string& target, int64_t layer);

// Fraction of positions whose truth is among the first k columns of ranked [N, K] candidates.
double topk_fraction(const torch::Tensor& ranked, const torch::Tensor& truth, int64_t k);

// Fills ttrsr, topk (k in ks, capped by the candidates available), victim_tokens, bleu4 and
// cosine (audit/metrics.h's metrics, per victim window, averaged) from ranked candidates [B*T, K] (row-major over the victim windows) and truth [B, T].
void score(audit::AttackResult& r, const torch::Tensor& ranked, const torch::Tensor& truth,
           const std::vector<int64_t>& ks = {1, 5, 10, 100});

// The AttackResult as JSON (audit/metrics.h's AttackResult::to_json, shared with `aloepri audit`).
nlohmann::json result_json(const audit::AttackResult& r);

// Minimum-cost assignment (Hungarian algorithm) on a square cost matrix [n][n]:
// returns col[row].
std::vector<int64_t> min_cost_assignment(const std::vector<std::vector<double>>& cost);

double now_seconds();

}  // namespace aloepri::attacks
