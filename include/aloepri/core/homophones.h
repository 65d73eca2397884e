// Homophonic vocabulary (issue 14, defence 2). Plaintext id t gets c_t >= 1 obfuscated ids (its
// copies); the obfuscated vocabulary has n' = n + B ids, B = sum_t (c_t - 1). The model carries
// one embedding row and one head column per copy (each a transform of t's row with its own noise
// draw), so whichever copy the client sends, the server computes the same thing up to that noise;
// the client picks a copy uniformly at random per occurrence and maps every copy back.
//
// What the server sees of a token is then the frequency of one copy, f_t / c_t, instead of f_t:
// copies allocated by unigram frequency flatten the distribution that frequency matching (TFMA)
// and substitution solving (SDA) start from.
//
// Output distribution: with exact (noise-free) copies every copy of t has t's logit z_t, so the
// engine's softmax over the n' ids gives t the merged probability c_t e^{z_t} / sum_u c_u e^{z_u}:
// greedy decoding is unchanged (copies tie, and all of them map back to t), sampling is tilted
// by c_t unless -log c_t is added to every copy's logit (docs/RESULTS.md "Homophonic vocabulary").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/core/rng.h"

namespace aloepri {

enum class CopyRule {
  // Greedy water-filling: each extra copy goes to the id whose per-copy frequency f_t / c_t is
  // currently the largest (ties: the lower id). It minimises the largest per-copy frequency, the
  // first thing a frequency-matching attacker reads; a frequent token ends with c_t ~ f_t / theta.
  Flat,
  // Shares of the extra copies ~ sqrt(f_t), largest remainders (the rule of the simulation in
  // `aloepri audit-stream --homophones`, kept for comparison with its figures).
  Sqrt,
};
CopyRule parse_copy_rule(const std::string& s);  // "flat" | "sqrt"; Error(kExitUsage) names --homophone-rule
std::string copy_rule_name(CopyRule r);

// Copies per id (c_t >= 1, sum = freq.size() + extra). Ids in `single` keep one copy (the
// published special ids: their obfuscated id is in config.json anyway, and an engine stops on
// one end id). Throws Error naming --homophones for a negative count.
std::vector<int64_t> allocate_copies(const std::vector<double>& freq, int64_t extra, CopyRule rule,
                                     const std::vector<int64_t>& single = {});

// The secret map between plaintext ids and obfuscated ids. Without copies it is tau
// (keyfile.h derive_tau: the same permutation, bit for bit). With copies the copy slots
// (t, 0..c_t-1) are laid out in plaintext order and a uniform permutation of [0, n') from the
// same stream "tau" places them.
class VocabMap {
 public:
  VocabMap() = default;
  VocabMap(const Seed& seed, int64_t n, const std::vector<int64_t>& copies = {});
  // An explicit map: copies per id and, for every copy slot in plaintext order, its obfuscated
  // id (a permutation of [0, n')); a plain permutation is tau with one copy each.
  VocabMap(const std::vector<int64_t>& copies, std::vector<int64_t> slot_ids);
  static VocabMap from_tau(const std::vector<int64_t>& tau) { return VocabMap({}, tau); }
  int64_t plain_size() const { return int64_t(first_.size()) - 1; }  // n
  int64_t size() const { return int64_t(to_plain_.size()); }           // n'
  bool homophonic() const { return size() > plain_size(); }
  int64_t copies(int64_t t) const { return first_[size_t(t) + 1] - first_[size_t(t)]; }
  int64_t id(int64_t t, int64_t c) const { return slot_[size_t(first_[size_t(t)] + c)]; }  // copy c of t
  int64_t plain(int64_t obf) const { return to_plain_[size_t(obf)]; }
  // tau of the copies-free map; with copies, copy 0 of each id (what a client uses for ids it
  // must name deterministically, e.g. the published EOS).
  std::vector<int64_t> first_copies() const;
  const std::vector<int64_t>& to_plain() const { return to_plain_; }  // [n']
  std::vector<int64_t> copy_counts() const;                             // [n], c_t

 private:
  std::vector<int64_t> first_;     // [n + 1]: slots of t are first_[t] .. first_[t+1]-1
  std::vector<int64_t> slot_;      // [n']: slot -> obfuscated id
  std::vector<int64_t> to_plain_;  // [n']: obfuscated id -> plaintext id
};

// The key record's form of the copies: {"extra": B, "rule": ..., "counts": source, "ids": [[t, c_t], ...]}
// listing only ids with c_t > 1. from_json checks every field (Error names `where`).
nlohmann::json copies_to_json(const std::vector<int64_t>& copies);
std::vector<int64_t> copies_from_json(const nlohmann::json& j, int64_t n, const std::string& where);

}  // namespace aloepri
