// The weight attacks (VMA, Gate-IA, Attn-IA, NN) on a homophonic served model (n' > n, issue 14).
// They match the n served ids one-to-one with the n public ones, so the attacker first groups
// the copies from the served weights (group_copies_by_weights with no gate, until n groups, as
// the oracle does) and gives each group the mean of its members' embedding rows and head rows:
// a served model of n ids with the served layers. The attacks run on that, and every copy is
// answered with its group's guesses. At the exact profile copies are identical rows, so the
// grouping and the mean are exact; with per-copy noise the mean also averages the noise down.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/audit/weights.h"
#include "aloepri/engine/forward.h"

namespace aloepri::audit {

struct GroupedServed {
  ModelWeights weights;           // vocabulary n: one embedding / head row per group
  std::vector<int32_t> group_of;  // [n'] served id -> group (0 .. n-1)
  nlohmann::json info;            // the grouping: stages, group sizes, seconds
};
// obf: the served model [n', d]; n: the public vocabulary. Throws Error naming the attack when
// the grouping cannot reach n groups.
GroupedServed group_served(const ModelWeights& obf, int64_t n);

// The served ids of q as their groups (distinct, sorted).
Query group_query(const Query& q, const std::vector<int32_t>& group_of);

// Guesses over groups -> guesses over served ids: each copy gets its group's (parts alike).
VocabAttack copies_from_groups(VocabAttack on_groups, const std::vector<int32_t>& group_of);

}  // namespace aloepri::audit
