// IMA (inversion-model attack, method.md section 9): the attacker knows the mechanism and its
// parameters but not the victim's seed. He obfuscates the public plaintext model himself with
// seeds of his own, pushes public text through each of his obfuscated models, and trains a
// small inversion network from the states the server would observe (the obfuscated embedding
// rows, or the residual stream after a layer) to the plaintext tokens. The network is then
// applied to the victim's states, obfuscated with the secret key. It can only succeed if what
// it learned from the attacker's keys carries over to an unseen key.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/rng.h"
#include "torch_model/llama.h"

namespace aloepri::attacks {

struct ImaOptions {
  int64_t layer = -1;                  // -1: obfuscated embedding rows; l >= 0: residual after layer l
  std::string arch = "transformer";    // transformer (2 bidirectional encoder layers) | mlp
  int64_t width = 256, depth = 2, heads = 4;
  int64_t steps = 400, batch = 16;
  double lr = 1e-3;
  int64_t candidates = 100;
  uint64_t seed = 1;
  bool progress = true;
};

// States of one obfuscated model on public windows, with the plaintext ids as labels.
struct LabelledStates {
  torch::Tensor states;  // [B, T, d']
  torch::Tensor ids;     // [B, T] plaintext ids
};

// Obfuscates plain_dir with `seed` and `params` into work_dir/<name> (replaced if present,
// removed afterwards unless keep), and returns its states on the plaintext windows `ids`
// (mapped through the seed's tau, as a client would send them). Calibrated kappa uses the
// first 512 public ids as calibration text.
LabelledStates attacker_states(const std::string& plain_dir, const ObfuscationParams& params, const Seed& seed,
                               const std::string& work_dir, const std::string& name, const torch::Tensor& ids,
                               int64_t layer, bool keep = false);

struct ImaOutput {
  torch::Tensor ranked;             // [B*T, candidates] plaintext ids, best first
  std::vector<double> loss_curve;   // training loss every 20 steps and the last
  double train_top1 = 0;            // top-1 on the last training batches (fit quality)
  int64_t output_vocab = 0;         // distinct plaintext ids in the training labels
};

// Trains on `train` (one entry per attacker key, batches drawn across them) and ranks the
// plaintext ids of every position of victim_states [B, T, d'].
ImaOutput run_ima(const std::vector<LabelledStates>& train, const torch::Tensor& victim_states,
                  const ImaOptions& opt);

// A 256-bit seed for the attacker's i-th key, from a public integer (attacker's choice).
Seed attacker_seed(uint64_t base, int64_t i);

}  // namespace aloepri::attacks
