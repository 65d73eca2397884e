// Grouping the copies of a homophonic vocabulary (homophones.h), as the attacker does before the
// stream attacks (issue 14). The client sends a random copy of each token, so TFMA/SDA over the
// copies see a flattened, diluted stream; an attacker who first groups the ids it believes are
// copies of one token, and attacks the merged stream, undoes the flattening as far as its
// grouping is right. Two attackers:
//
//  - from the weights (the server holds the served checkpoint): copies of one token are the same
//    embedding row and head row, bitwise at the exact profile, plus an independent noise draw per
//    copy at the noise profiles. Identical rows are grouped first; then the closest pairs of the
//    attacker's own normalisation (standardized columns, each half scaled to unit norm: cosine),
//    closest first, until n groups remain (n: the public vocabulary) or the next pair is no
//    closer than `gate` times the typical distance between two rows.
//  - from the traffic alone: copies of one token occur in the same contexts. Each symbol seen at
//    least `min_count` times gets its left/right neighbour counts (PPMI-weighted), the pairs of
//    highest cosine are merged first, each only while the two groups' summed contexts stay alike
//    (no group larger than the most copies the public table gives a token), until the number of
//    merges the public table predicts for this much traffic; a
//    second pass recomputes the contexts over the first pass's groups (copies of the neighbours
//    merged) and groups again.
//
// Neither uses the key; score_copy_grouping compares a grouping with the key's copy map.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/tensor.h"

namespace aloepri::audit {

struct CopyGrouping {
  std::vector<int32_t> group;  // [n'] group of each id (0 .. groups-1); -1 = not grouped (unseen)
  int32_t groups = 0;
  nlohmann::json info;         // how it was made: stages, merges, stop reason, seconds
};

struct WeightGroupingOptions {
  // Merges stop when the next pair's distance exceeds gate x the median distance between two
  // random rows (0 = no gate: merge until n groups).
  double gate = 0.8;
  int neighbours = 8;  // nearest rows per row whose pairs are candidates
  // no group larger than this (0 = no limit): the most copies the public table gives a token
  int64_t max_group = 0;
};
// The one-to-one attacks' setting (the oracle, the weight attacks on grouped rows): no gate and 4
// neighbours, so that every served id ends in one of exactly n groups.
inline WeightGroupingOptions onto_vocabulary() {
  WeightGroupingOptions o;
  o.gate = 0;
  o.neighbours = 4;
  return o;
}
// embed, head: [n', d] (the head in HF layout: one row per id). n: the public vocabulary.
CopyGrouping group_copies_by_weights(const Tensor& embed, const Tensor& head, int64_t n,
                                     const WeightGroupingOptions& opt = {});

struct ContextGroupingOptions {
  int min_count = 2;        // symbols seen fewer times stay alone
  int neighbours = 10;      // most similar symbols per symbol whose pairs are candidates
  int passes = 2;           // pass p > 1 reads the neighbours through pass p-1's groups
  int64_t max_posting = 4000;  // context features shared by more symbols carry no grouping signal
  double min_cosine = 0.05;    // pairs below are never merged
  // a pair joins two groups only when the cosine of their summed context rows is at least this
  // (0 = single linkage)
  double linkage_cosine = 0.3;
};
// traffic: symbol ids in [0, symbols). copies: the public copy table, c_t per plaintext id;
// unigram: public plaintext frequencies (any scale; the prior's counts). Together they predict
// how many distinct symbols and tokens this much traffic shows, hence how many merges to make.
CopyGrouping group_copies_by_context(const std::vector<TokenSeq>& traffic, int32_t symbols,
                                     const std::vector<int64_t>& copies, const std::vector<double>& unigram,
                                     const ContextGroupingOptions& opt = {});

// A grouping against the truth (symbol -> plaintext id), over the ids with group >= 0: pairwise
// precision (pairs grouped together that are copies of one token; 1 when no pair is grouped),
// recall (pairs of copies grouped together), and the share of tokens whose copies are exactly
// one group.
struct GroupingScore {
  double precision = 0, recall = 0;
  double tokens_exact = 0;  // of the tokens with two or more scored copies: all of them one group, alone
  int64_t ids = 0, groups = 0, tokens = 0, pairs_grouped = 0, pairs_true = 0;
  nlohmann::json to_json() const;
};
GroupingScore score_copy_grouping(const CopyGrouping& g, const std::vector<int32_t>& symbol_to_plain);

}  // namespace aloepri::audit
