// Weight-based privacy attacks (method.md section 9, issue 5): VMA (sort-and-match on weight
// pairs, voting across layers), Gate-IA / Attn-IA (invariants), and NN (nearest neighbour after
// the strongest linear alignment we found: FFN channel matching, then a least-squares inversion
// of the key matrix).
//
// The attacker holds the plaintext public model, the obfuscated model and the mechanism's
// public parameters (alpha_e, alpha_h and the noise-scale rule; never the seed). Every attack
// returns, per obfuscated token id it is asked about, a ranked list of plaintext ids
// (Guesses). The key is used only afterwards, by score_vocab_attack(), to know tau.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "aloepri/audit/metrics.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/core/tensor.h"
#include "aloepri/engine/forward.h"

namespace aloepri::audit {

// The attacks read the engine's weights structure (forward.h: Hugging Face layout, f32), the one
// the reference forward and the calibrator run on.
using aloepri::LayerWeights;
using aloepri::ModelWeights;

// A checkpoint (plaintext or obfuscated) as the weight attacks read it: ModelWeights::load
// (every tensor checked; the head filled with the embedding when tied). A DeepSeek sparse layer's
// shared experts stand in for its FFN (w_gate/w_up/w_down); a Qwen3-MoE checkpoint is refused,
// naming its config: its sparse layers need the pair (load_weight_pair).
ModelWeights load_weights(const std::string& dir);
// Both models of an audit, as load_weights, and for sparse layers without shared experts
// (Qwen3-MoE) the attacker's expert pairing (pair_routed_experts) done.
std::pair<ModelWeights, ModelWeights> load_weight_pair(const std::string& plain_dir, const std::string& obf_dir);
// The attacker's pairing of routed experts (Qwen3-MoE). The obfuscated router read on the
// obfuscated embedding rows is the plaintext router (norm gain applied) read on the plaintext
// rows with its outputs relabelled by Z_router: the embedding's writer map and the router's reader
// map cancel, as they do for Gate-IA. The rows are in the secret vocabulary order, so each column
// is compared by its sorted values (quantiles): nearest distributions pair each obfuscated slot
// with a plaintext expert; all experts side by side, in that pairing, then stand in for the
// layer's FFN on both sides (w_gate/w_up/w_down: E x fe channels), so every dense attack runs.
// Returns, per layer (empty for dense layers), the slot the attacker gives each plaintext expert.
std::vector<std::vector<int64_t>> pair_routed_experts(ModelWeights& plain, ModelWeights& obf);

// What the attacker knows about the mechanism (public parameters, not the seed).
struct Mechanism {
  double alpha_e = 1.0, alpha_h = 0.2;
  bool per_row_noise = false;  // noise std per row (else the global std of the matrix)
};

struct WeightAttackOptions {
  Mechanism mech;
  int quantiles = 32;         // sorted-row signature length per weight pair
  int topk = 10;              // candidates kept per obfuscated id
  bool emb_head_pair = true;  // VMA: the n x n embedding x head pair (the costly one)
  bool per_pair_scores = true;  // VMA: also match on each pair alone (details, needs truth)
  uint64_t sim_seed = 12345;  // the attacker's own randomness (noise simulation)
  double budget_seconds = 0;  // 0 = unlimited; pairs past the budget are skipped (noted)
  // NN: the drift-robust alignment (every FFN reader of every layer, iteratively reweighted
  // least squares, channels re-matched in the recovered basis; nn.cpp) or the single-layer
  // trimmed fit it replaced (kept to measure the difference).
  bool nn_robust = true;
  int nn_rounds = 3;  // robust NN: re-match / re-fit rounds after the start
};

// The obfuscated ids an attack is asked to invert (typically the distinct ids of the observed
// traffic plus a uniform sample for vocabulary-level recovery).
struct Query {
  std::vector<int32_t> obf_ids;
};

struct VocabAttack {
  std::string attack;
  Guesses guesses;  // indexed by obfuscated id (size n); entries outside the query are empty
  nlohmann::json details = nlohmann::json::object();
  double seconds = 0;
  // Optional: per-component guesses (e.g. VMA per weight pair), scored alongside.
  std::vector<std::pair<std::string, Guesses>> parts;
};

VocabAttack vma_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& q,
                       const WeightAttackOptions& opt);
VocabAttack gate_ia_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& q,
                           const WeightAttackOptions& opt);
VocabAttack attn_ia_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& q,
                           const WeightAttackOptions& opt);
VocabAttack nn_attack(const ModelWeights& plain, const ModelWeights& obf, const Query& q,
                      const WeightAttackOptions& opt);

// Scoring (uses the truth): tau[plain] = obf. TTRSR and top-k on the victim token stream
// (plaintext ids), vocabulary-level recovery on `vocab_sample` (plaintext ids).
// Over a homophonic vocabulary (homophones.h) `sent` holds the obfuscated id each victim token was
// sent as (the client's copy), and the victim is scored at those ids; tau is then copy 0 of each
// id (used for vocab_sample: an id counts as recovered when its copy 0 is).
AttackResult score_vocab_attack(const VocabAttack& a, const std::string& setting, const std::vector<int64_t>& tau,
                                const std::vector<int32_t>& victim, const std::vector<int32_t>& vocab_sample,
                                const std::vector<int>& ks = {1, 5, 10}, const std::vector<int32_t>* sent = nullptr);

// A uniform sample of `count` distinct ids in [0, n) from a fixed seed.
std::vector<int32_t> sample_ids(int64_t n, int64_t count, uint64_t seed);
// The query an attacker builds from traffic: distinct obfuscated ids of tau(victim) and of
// tau(vocab_sample) (the sample stands for "every id"; tau is applied here as the client would).
Query make_query(const std::vector<int64_t>& tau, const std::vector<int32_t>& victim,
                 const std::vector<int32_t>& vocab_sample);

// Building blocks (exposed for tests).
namespace detail {
// Per row of the [rows, len] matrix: the sorted values at `q` evenly spaced quantiles, then
// centred and scaled to unit norm (a shape signature, invariant to column permutations and
// to one positive scale per row). out: [rows, q].
Tensor sorted_row_signature(const Tensor& m, int q);
// Divides every column by its standard deviation over rows (removes positive column scales).
void normalize_columns(Tensor& m);
// For each query row of `queries` [r, D], the k nearest rows of `base` [n, D] (squared L2),
// nearest first.
std::vector<std::vector<int32_t>> nearest_rows(const Tensor& queries, const Tensor& base, int k);
// Minimum-cost perfect assignment of an n x n cost matrix (Hungarian): row i -> column out[i].
std::vector<int32_t> min_cost_assignment(const std::vector<double>& cost, int64_t n);
}  // namespace detail

}  // namespace aloepri::audit
