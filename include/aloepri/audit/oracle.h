// The oracle attack (issue 13, item 1): vocabulary matching by RUNNING the models, the
// capability every server has (cf. Thomas et al., "Hidden No More", ICML 2025).
//
// The server can feed any obfuscated id to the model it serves and read the distribution it
// answers with; it can do the same with the public model. If the served model computes the
// public model's function on permuted ids (that is what an accurate obfuscation is), then
//   P~(tau(y) | bos~, tau(x)) = P(y | bos, x)       for every pair of tokens (x, y),
// so the two n x n "bigram after bos" matrices are the same matrix with rows and columns
// permuted by tau. Recovering tau is graph matching on that weighted graph:
//   1. signatures no secret changes: per row the sorted top-k next-token log-probabilities, per
//      column the sorted top-k log-probabilities of that token over all contexts;
//   2. seeds: the published bos/eos ids (method.md section 7) and the best mutual nearest
//      neighbours of the signatures;
//   3. growth: with anchors a (pairs a~ <-> a), every token x gets unsorted features
//      [log P(a | bos, x)]_a (row) and [log P(x | bos, a)]_a (column) on each side; nearest
//      neighbours give a new assignment, whose most confident mutual pairs become anchors, and
//      so on for a few rounds.
// The key never enters; it only scores the guesses afterwards (audit/report.h).
#pragma once
#include <cstdint>
#include <vector>

#include "aloepri/audit/weights.h"

namespace aloepri {
class ReferenceModel;
}

namespace aloepri::audit {

struct OracleOptions {
  int64_t rows = 0;          // tokens run through each model (0 = the whole vocabulary); fewer =
                             // the most likely after bos on each side, plus every queried id
  int64_t match_rows = 4096;  // obfuscated rows matched (and anchor candidates) besides the
                              // queried ids: the most likely after bos
  int64_t signature_k = 64;  // sorted log-probabilities per row / column signature
  int64_t anchors = 1024;    // anchors used for the unsorted features, at most
  int rounds = 6;            // anchor-growth rounds (128, 512, then `anchors` anchors each)
  int topk = 10;             // candidates kept per obfuscated id
  double budget_seconds = 0;  // 0 = unlimited; later rounds are skipped past the budget (noted)
  // Seeds from elsewhere, (obfuscated id, plaintext id): e.g. another attack's matches. Where
  // the noise blurs the sorted signatures the growth never starts from them alone; a few hundred
  // partly right pairs from the weights (the drift-robust NN) start it. They join the published
  // bos/eos pair as the first anchors of every round (at most `anchors` are used).
  std::vector<std::pair<int32_t, int32_t>> seeds;
};

// Runs both models on [bos, x] for their rows and matches the vocabularies. `plain_bos` /
// `obf_bos` and the eos pair are the ids each model's config publishes (-1 = unknown).
// The oracle seeded by the weight attack NN (audit entry "oracle-nn"): NN's top-1 guesses that
// no other queried id shares, the ids most frequent in the traffic first, at most opt.anchors.
std::vector<std::pair<int32_t, int32_t>> seeds_from_guesses(const Guesses& g, const std::vector<int32_t>& traffic,
                                                            int64_t max_seeds);

VocabAttack oracle_attack(ReferenceModel& plain, ReferenceModel& obf, int64_t plain_bos, int64_t obf_bos,
                          int64_t plain_eos, int64_t obf_eos, const Query& q, const OracleOptions& opt);

}  // namespace aloepri::audit
