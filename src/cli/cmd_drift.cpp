// `aloepri audit-drift MODEL --out DIR --eps E [--kind gaussian|lowrank] [--rank R] [--vocab]`:
// a copy of a model with every layer weight perturbed by relative drift E (audit/drift.h), the
// stand-in for a client's private fine-tune when measuring how the weight attacks degrade.
#include <iomanip>
#include <iostream>

#include "aloepri/audit/drift.h"
#include "command.h"

namespace {
auto setup(CLI::App& sub) {
  struct Opts {
    std::string model, out, kind = "gaussian";
    aloepri::audit::DriftOptions d;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("model", o->model, "Plaintext model directory (HF checkpoint)")->required();
  sub.add_option("--out", o->out, "Directory to create with the drifted copy")->required();
  sub.add_option("--eps", o->d.eps, "Relative drift ||Delta||_F / ||W||_F per tensor (default 0.05)");
  sub.add_option("--kind", o->kind, "gaussian (full-rank i.i.d.) or lowrank (A B^T, like a fine-tune; default gaussian)");
  sub.add_option("--rank", o->d.rank, "Rank of the low-rank drift (default 8)");
  sub.add_option("--seed", o->d.seed, "Seed of the drift's randomness (default 1)");
  sub.add_flag("--vocab", o->d.vocab, "Also drift the embedding and the head (default: decoder layers only)");
  sub.add_flag("--force", o->d.force, "Replace an existing output directory");
  sub.footer(
      "A testing aid for `aloepri audit`: obfuscate the drifted copy with your key and attack it\n"
      "with the original (public) model, to see how far the weight attacks survive a fine-tune.\n"
      "Layer weights (q, k, v, o, gate, up, down) drift; norm weights and biases are kept.");
  return [o] {
    o->d.kind = aloepri::audit::parse_drift_kind(o->kind, "--kind");
    const double got = aloepri::audit::write_drifted_model(o->model, o->out, o->d);
    std::cerr << "wrote " << o->out << " (realised relative drift " << std::setprecision(4) << got << ")\n";
    return 0;
  };
}
}  // namespace
ALOEPRI_COMMAND(audit_drift, "audit-drift", 73, "Testing aid: a copy of a model with drifted weights (simulated fine-tune)",
                setup);
