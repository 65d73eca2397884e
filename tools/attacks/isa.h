// ISA (internal-state inversion, method.md section 9): the server observes an internal state of
// the obfuscated model for the victim's prompt (the residual stream after a layer, or a layer's
// attention scores) and optimises input embeddings with autograd so that the PLAINTEXT model
// reproduces it, then maps the optimised embeddings to the nearest vocabulary rows.
//
// The attacker does not know the key, so the match is made on what the key leaves intact:
//   hidden / align "linear": the best linear map from the plaintext states to the observed ones
//       is fitted in closed form at every step (ridge least squares over all victim positions:
//       the key is fixed across the victim's traffic), and the loss is the relative residual;
//   hidden / align "orthogonal": the same with the best scaled orthogonal map (Procrustes, in
//       closed form through the nuclear norm): fewer degrees of freedom, exact for the exact
//       setting's orthogonal key;
//   hidden / align "none":   direct relative squared error (only meaningful without a key);
//   attn:  pre-softmax attention scores, which the key matrices preserve; the unknown head
//       permutation is first ignored (each score entry's values over the heads are sorted, a
//       permutation-invariant match), then re-solved every few steps as a minimum-cost
//       assignment of plaintext to observed heads.
// Parametrisation ("relax"): free input embeddings mapped to the nearest vocabulary rows
// ("embed"), or per-position logits over the vocabulary whose softmax mixes embedding rows
// ("vocab", ranked by the logits).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "torch_model/llama.h"

namespace aloepri::attacks {

struct IsaOptions {
  std::string target = "hidden";  // hidden | attn
  int64_t layer = 0;              // hidden: -1 (embedding) .. L-1; attn: 0 .. L-1
  std::string align = "linear";   // hidden: linear | orthogonal | none
  std::string relax = "embed";    // embed | vocab
  std::string optimizer = "lbfgs";  // lbfgs (strong Wolfe; iters = outer steps of <= 20) | adam (cosine-decayed)
  int64_t iters = 50;
  double lr = 1.0;                // embed: in units of the embedding matrix's std; vocab: on logits
  int64_t reassign_every = 10;    // attn: head assignment refresh
  int64_t warmup_percent = 50;    // attn: first steps match sorted head values (no assignment)
  double ridge = 1e-4;            // linear alignment: ridge, relative to the mean diagonal
  int64_t candidates = 100;       // ranked candidates kept per position
  uint64_t seed = 1;
  bool progress = true;
};

struct IsaOutput {
  torch::Tensor ranked;              // [B*T, candidates] plaintext ids, best first
  std::vector<double> loss_curve;    // every 10 steps and the last
  std::vector<int64_t> head_assignment;  // attn: plaintext head -> observed head
};

// The key-invariant match of plaintext states X [N, d] to observed states O [N, d'] ("linear",
// "orthogonal"; "none" = relative squared error, needs d' = d): 0 when O is X times a key of
// that kind, up to 1 for unrelated states.
torch::Tensor alignment_loss(const torch::Tensor& X, const torch::Tensor& O, const std::string& align,
                             double ridge = 1e-4);

// observed: hidden [B, T, d_obs] or attn [B, H, T, T] (from observe()); B, T: victim windows.
IsaOutput run_isa(const torch_model::Llama& plain, const torch::Tensor& observed, int64_t B, int64_t T,
                  const IsaOptions& opt);

}  // namespace aloepri::attacks
