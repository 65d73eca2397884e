// The latent attack on DeepSeek's multi-head latent attention (issue 16): what the server can
// recover of the MLA keys (obfuscate/mla.h) from the public and the obfuscated weights alone.
//
// A latent's consumer (kv_b_proj for the kv latent, q_b_proj for the q latent) is, per head h,
// Y~_s = L_h Y_h R with Y = W diag(published gain), L_h invertible per head (the nope / value /
// RoPE-pair maps), R orthogonal, s = the head's slot. So the row space of each obfuscated head
// block is the public head's row space turned by R, and the projectors onto them satisfy
// Pi~_s = R^T Pi_h R. The attack: (1) the eigenvectors of sum_h Pi_h and of sum_s Pi~_s give R up
// to one sign per eigenvector; (2) in those bases each head's projector is the same matrix up to
// those signs, so |entries| match heads to slots; (3) the signs follow from the matched heads'
// off-diagonal entries; (4) least squares then gives each head's L_h (the nope and value maps).
// Identifiable when a head's block has fewer rows than the latent (DeepSeek-V2/V3: 256 of 512,
// 192 of 1536); otherwise every projector is the identity and the attack says so.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/engine/forward.h"
#include "aloepri/linalg/linalg.h"

namespace aloepri::audit {

struct LatentRecovery {
  std::string latent;                // "kv" | "q"
  int64_t layer = 0;
  bool identifiable = false;         // a head block has fewer rows than the latent
  std::vector<int64_t> head_of_slot; // the attacker's plaintext head for each obfuscated slot
  linalg::Mat R;                     // the recovered latent map (up to a global sign)
  double eigen_mismatch = 0;         // max |lambda~ - lambda| / max lambda (attacker-side check)
  double residual = 0;               // |Y~ - L^ Y R^| / |Y~| over all heads (0: fully explained)
};

// Both latents of every layer of a DeepSeek model pair (plaintext, obfuscated, same config up to
// the hidden size). Throws Error for a model without latent attention.
std::vector<LatentRecovery> mla_latent_attack(const ModelWeights& plain, const ModelWeights& obf);

// The figures of one recovery against the truth (the key's R and head slots; scoring only):
// fraction of slots whose head is right, min over the sign of |R^ -+ R|_F / |R|_F.
nlohmann::json score_latent_recovery(const LatentRecovery& r, const linalg::Mat& R_true,
                                     const std::vector<int64_t>& head_slot_true);

}  // namespace aloepri::audit
