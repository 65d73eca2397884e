// `aloepri forward MODEL --ids 1,2,3 [--greedy N] [--all-logits] [--json]`: run the reference
// forward pass (f32 weights, f64 accumulation) on token ids. The JSON shape is shared with the
// llama.cpp harness so the two engines' outputs can be compared field by field:
// {"engine","model","ids","vocab_size","last_logits","greedy"[,"logits"]}.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <numeric>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "command.h"

namespace {

struct Options {
  std::string model, ids;
  int64_t greedy = 0;
  bool all_logits = false, json_out = false;
};

int run(const Options& o) {
  using namespace aloepri;
  const std::vector<int64_t> ids = cli::parse_ids_csv(o.ids);
  if (o.greedy < 0) throw Error("--greedy", "must be >= 0", kExitUsage);
  ReferenceModel m = ReferenceModel::load(o.model);
  const int64_t n = m.vocab_size();
  for (int64_t id : ids)
    if (id >= n)
      throw Error("--ids", "token id " + std::to_string(id) + " is out of range for vocab_size " + std::to_string(n),
                  kExitUsage);

  std::vector<double> all, last(n);
  if (o.all_logits) {
    all = m.forward(ids);
    std::copy(all.end() - n, all.end(), last.begin());
  } else {
    last = m.prefill(ids);
  }
  // Greedy continuation from the prompt's cache (same as ReferenceModel::greedy).
  std::vector<int64_t> gen;
  std::vector<double> cur = last;
  for (int64_t i = 0; i < o.greedy; ++i) {
    gen.push_back(ReferenceModel::argmax(cur.data(), n));
    if (i + 1 < o.greedy) cur = m.step(gen.back());
  }

  if (o.json_out) {
    // ordered_json keeps the documented field order; nlohmann prints doubles in the shortest
    // form that round-trips exactly.
    nlohmann::ordered_json j;
    j["engine"] = "reference";
    j["model"] = o.model;
    j["ids"] = ids;
    j["vocab_size"] = n;
    j["last_logits"] = last;
    j["greedy"] = gen;
    if (o.all_logits) {
      nlohmann::ordered_json rows = nlohmann::ordered_json::array();
      for (size_t t = 0; t < ids.size(); ++t)
        rows.push_back(std::vector<double>(all.begin() + t * n, all.begin() + (t + 1) * n));
      j["logits"] = rows;
    }
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = std::min<int64_t>(5, n);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return last[a] > last[b] || (last[a] == last[b] && a < b);
  });
  std::printf("reference forward: %s (%s, vocab %lld), %zu tokens\n", o.model.c_str(),
              family_name(m.config().family).c_str(), (long long)n, ids.size());
  std::printf("top-5 at the last position:\n");
  for (int64_t i = 0; i < k; ++i) std::printf("  %8lld  %.6f\n", (long long)order[i], last[order[i]]);
  if (!gen.empty()) {
    std::printf("greedy:");
    for (int64_t g : gen) std::printf(" %lld", (long long)g);
    std::printf("\n");
  }
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("MODEL", o->model, "HF checkpoint directory")->required();
  sub.add_option("--ids", o->ids, "Comma-separated token ids, e.g. 1,2,3")->required();
  sub.add_option("--greedy", o->greedy, "Also generate N tokens greedily (ties: lowest id)");
  sub.add_flag("--all-logits", o->all_logits, "Include the logits of every position (JSON 'logits')");
  sub.add_flag("--json", o->json_out, "Print one JSON object");
  return [o] { return run(*o); };
}

}  // namespace

ALOEPRI_COMMAND(forward, "forward", 40, "Run the reference forward pass (f64) on token ids", setup);
