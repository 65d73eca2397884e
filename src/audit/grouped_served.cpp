// Weight attacks on a homophonic served model: copies grouped, one row per group (see header).
#include "aloepri/audit/grouped_served.h"

#include <algorithm>
#include <chrono>

#include "aloepri/audit/copy_groups.h"
#include "aloepri/core/error.h"
#include "weight_internal.h"

namespace aloepri::audit {

namespace {
// out [groups, d]: the mean of the rows of M [n', d] in each group.
Tensor group_means(const Tensor& M, const std::vector<int32_t>& group_of, int64_t groups,
                   const std::vector<int64_t>& size) {
  const int64_t d = M.cols();
  std::vector<double> acc(size_t(groups * d), 0.0);
  for (int64_t id = 0; id < M.rows(); ++id) {
    double* a = acc.data() + int64_t(group_of[size_t(id)]) * d;
    const float* m = M.ptr() + id * d;
    for (int64_t k = 0; k < d; ++k) a[k] += double(m[k]);
  }
  Tensor out({groups, d});
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t k = 0; k < d; ++k) out.at(g, k) = float(acc[size_t(g * d + k)] / double(size[size_t(g)]));
  return out;
}
}  // namespace

GroupedServed group_served(const ModelWeights& obf, int64_t n) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t np = obf.embed.rows(), d = obf.embed.cols();
  require(np > n, "weight attacks", "the served vocabulary (" + std::to_string(np) +
                                        ") is not larger than the public one: nothing to group");
  require(obf.head.rows() == np && obf.head.cols() == d, "weight attacks", "the served head is not [n', d']");
  const CopyGrouping cg = group_copies_by_weights(obf.embed, obf.head, n, onto_vocabulary());
  require(cg.groups == n, "weight attacks",
          "grouping the served copies gave " + std::to_string(cg.groups) + " groups, not the public vocabulary's " +
              std::to_string(n));
  GroupedServed out;
  out.group_of = cg.group;
  std::vector<int64_t> size(size_t(n), 0);
  for (int32_t g : out.group_of) {
    require(g >= 0 && g < n, "weight attacks", "a served id was left ungrouped");
    ++size[size_t(g)];
  }
  out.weights.config = obf.config;
  out.weights.config.vocab_size = n;
  out.weights.final_norm = obf.final_norm;
  out.weights.layers = obf.layers;
  out.weights.embed = group_means(obf.embed, out.group_of, n, size);
  out.weights.head = group_means(obf.head, out.group_of, n, size);
  out.info = {{"grouping", "served weights: identical rows, then closest pairs until n groups"},
              {"obf_vocab", np},
              {"groups", n},
              {"largest_group", *std::max_element(size.begin(), size.end())},
              {"identical_groups", cg.info.value("identical_groups", nlohmann::json())},
              {"merged_by_distance", cg.info.value("merged_by_distance", nlohmann::json())},
              {"seconds", internal::seconds_since(t0)}};
  return out;
}

Query group_query(const Query& q, const std::vector<int32_t>& group_of) {
  Query out;
  for (int32_t id : q.obf_ids)
    if (id >= 0 && size_t(id) < group_of.size()) out.obf_ids.push_back(group_of[size_t(id)]);
  std::sort(out.obf_ids.begin(), out.obf_ids.end());
  out.obf_ids.erase(std::unique(out.obf_ids.begin(), out.obf_ids.end()), out.obf_ids.end());
  return out;
}

VocabAttack copies_from_groups(VocabAttack a, const std::vector<int32_t>& group_of) {
  auto expand = [&](const Guesses& g) {
    Guesses out(group_of.size());
    for (size_t id = 0; id < group_of.size(); ++id)
      if (size_t(group_of[id]) < g.size()) out[id] = g[size_t(group_of[id])];
    return out;
  };
  a.guesses = expand(a.guesses);
  for (auto& [name, g] : a.parts) g = expand(g);
  return a;
}

}  // namespace aloepri::audit
