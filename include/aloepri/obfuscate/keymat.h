// Residual-stream key matrices (method.md section 4, the report's Algorithm 1 with dimensions
// fixed), and an exact-norm variant.
//
// Paper variant: a shared base (U Haar on O(d), V ~ N(0, 1/d), B = U + lambda V, B^-1,
// E = E1 E2 (d x h, rank h/2), F = F1 F2 (h x d, rank h/2), Z Haar on O(d')), and per instance
//   P = [B | C | E] Z  (d x d'),  C = G N_F, rows in the left null space of F,
//   Q = Z^T [B^-1 ; F ; D]  (d' x d),  D = N_E K, columns in null(E),
// so P Q = B B^-1 + C F + E D = I_d for ANY instance pair. G, K have N(0, 1/d) entries over
// orthonormal null-space bases ([choice] in method.md; measured in docs/RESULTS.md "Covariant obfuscation").
//
// Exact-norm variant: P = sqrt(c) [U | 0] Z with c = d'/d, the same for every writer, and
// Q_j = Z^T [U^T / sqrt(c) ; D_j] with D_j (2h x d) fresh N(0, 1/d) per reader. Then P Q_j = I,
// P P^T = c I, so ||x P|| = sqrt(d'/d) ||x|| for every x: RMSNorm over d' with weight 1 and
// the plaintext eps is exact. (Per-writer variety is impossible here: P_i Q_j = I for all i, j
// plus P_i P_i^T = cI forces every P_i to equal sqrt(c) U Z_top when h < d.)
//
// Implementation: the parts shared by all instances (B Z_top + E Z_bot and Z_top^T B^-1 +
// Z_mid^T F) are precomputed once; an instance only adds a rank-h/2 (or rank-2h) term, so a
// fresh instance per layer and role costs O(d d' h), not O(d'^2 d).
#pragma once
#include <cstdint>
#include <string>

#include "aloepri/obfuscate/math.h"
#include "aloepri/core/rng.h"

namespace aloepri::obf {

enum class KeymatVariant { Paper, ExactNorm };
std::string keymat_name(KeymatVariant v);  // "paper" | "exact-norm"

class KeyMatrices {
 public:
  // d hidden size, h expansion (even, >= 0), lambda >= 0. Randomness from stream "keymat/base".
  KeyMatrices(const Seed& seed, int64_t d, int64_t h, double lambda, KeymatVariant variant);

  int64_t d() const { return d_; }
  int64_t h() const { return h_; }
  int64_t dprime() const { return d_ + 2 * h_; }
  KeymatVariant variant() const { return variant_; }

  // A fresh writer instance P (d x d') for `role` (stream "keymat/P/<role>"), e.g. "emb",
  // "layer/3/o", "layer/3/down".
  Mat P(const std::string& role) const;
  // A fresh reader instance Q (d' x d) for `role` (stream "keymat/Q/<role>").
  Mat Q(const std::string& role) const;


 private:
  Seed seed_;
  int64_t d_, h_;
  double lambda_;
  KeymatVariant variant_;
  Mat Z_low_;    // 2h x d': rows d .. d' of the Haar Z (Z_mid; Z_bot)
  Mat P_base_;   // d x d'
  Mat Q_base_;   // d' x d
  Mat NF_;       // h/2 x h: orthonormal rows r with r F = 0 (paper)
  Mat NE_;       // h x h/2: orthonormal columns n with E n = 0 (paper)
};

}  // namespace aloepri::obf
