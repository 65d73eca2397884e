// Drifted models for the privacy audit (issue 13): a copy of a checkpoint whose weights are
// perturbed as a private fine-tune would move them, so that the weight attacks can be measured
// against served weights that are no longer an exact transform of the public ones.
//
// Every 2-D weight of every decoder layer (q, k, v, o, gate, up, down) is replaced by W + Delta
// with ||Delta||_F = eps ||W||_F (in expectation for the Gaussian kind, exactly for the low-rank
// kind). Norm weights and biases are kept (a fine-tune moves them too, but they are folded into
// readers the attack already treats as unknown scales). With `vocab`, the embedding and the head
// drift as well (a tied model stays tied: one perturbation for both).
#pragma once
#include <cstdint>
#include <string>

namespace aloepri::audit {

enum class DriftKind {
  Gaussian,  // Delta = eps ||W||_F / sqrt(numel) * G, G i.i.d. N(0, 1): full-rank, unstructured
  LowRank,   // Delta = eps ||W||_F * A B^T / ||A B^T||_F, A [out, r], B [in, r] Gaussian: what
             // fine-tuning (and LoRA in particular) produces
};

struct DriftOptions {
  double eps = 0.05;
  DriftKind kind = DriftKind::Gaussian;
  int64_t rank = 8;    // LowRank only
  uint64_t seed = 1;   // the drift's own randomness ("drift/<tensor name>" streams)
  bool vocab = false;  // also the embedding and the head
  bool force = false;  // replace an existing out_dir
};

// "gaussian" | "lowrank"; throws Error(kExitUsage) naming `where` otherwise.
DriftKind parse_drift_kind(const std::string& s, const std::string& where);

// Writes the drifted copy of model_dir into out_dir (atomic; config.json and tokenizer files
// copied, tensors in the input's dtype). Returns the realised relative drift
// sqrt(sum ||Delta||^2 / sum ||W||^2) over the tensors that drifted.
double write_drifted_model(const std::string& model_dir, const std::string& out_dir, const DriftOptions& opt);

}  // namespace aloepri::audit
