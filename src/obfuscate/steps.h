// The obfuscation steps (not part of the public interface): 0 the embedding, 1 + l layer l,
// L + 1 the final norm and the head (a step is also the unit of --shard). Each loads its
// plaintext tensors, draws its keys from their own streams, applies the component transforms and
// hands the results to `put` in the plan's order (plan.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aloepri/core/homophones.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/keymat.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/tensor.h"

namespace aloepri {

class Calibrator;

// The RMSNorm scale kappa at the next norm: 1 for exact-norm key matrices, measured on real
// activations when calibrating, else the Gaussian estimate E||x~||^2 / E||x||^2 =
// mean_k ||P_k||_F^2 / d' over the writers seen so far (independent equal-variance x_k).
class KappaTracker {
 public:
  KappaTracker(const ObfuscationParams& P, const obf::KeyMatrices& K, int64_t dp);
  ~KappaTracker();
  double now() const;
  void add_writer(const Tensor& Pf);          // a writer this run computes (its P in f32)
  void skip_writer(const std::string& role);  // a writer of a step this run skips: counted only
  std::unique_ptr<Calibrator> calib;           // set by the embedding step under --kappa calibrated

 private:
  bool exact_norm_;
  const obf::KeyMatrices& K_;
  int64_t dp_;
  double writer_fro_ = 0;
  int64_t writers_ = 0;
};

// What every step reads.
struct StepContext {
  const HFModel& plain;
  const Seed& seed;
  const ObfuscateOptions& opt;
  const obf::KeyMatrices& K;
  const VocabMap& vm;
  const std::vector<double>& inv_freq;
  int64_t dp;                     // d'
  double emb_alpha, head_alpha;   // 0 when the checkpoint already carries the key's noise
  KappaTracker& kappa;
  std::function<void(double)> note_kappa;                                // each norm's kappa, in order
  std::function<void(const std::string&, std::vector<float>)> put;     // a finished tensor, plan order
};

void embedding_step(StepContext& s);
void layer_step(StepContext& s, int64_t l);
void head_step(StepContext& s);

}  // namespace aloepri
