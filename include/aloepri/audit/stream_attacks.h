// Token-stream attacks of the privacy audit (issue 5, method.md section 9): the server sees the
// obfuscated token stream tau(plaintext ids), i.e. a fixed substitution cipher over the
// vocabulary, and the attacker has public text priors.
//
//  - TFMA (token frequency matching): rank the obfuscated ids by their frequency in the observed
//    traffic, the plaintext ids by their frequency in a prior corpus, and match by rank; the k
//    candidates of an obfuscated id are the prior ids of the nearest ranks.
//  - SDA (substitution deciphering): start from TFMA's mapping and improve it by simulated
//    annealing over the injective mapping, maximising the likelihood of the observed traffic
//    under the prior's bigram language model (Witten-Bell smoothed), within a time budget.
//
// Neither attack depends on the model weights: only on tau, the victim text and the prior.
// The key (tau) is used only to score (`truth`), never by the attacks.
//
// Traffic file format (read_traffic / write_traffic): JSON lines, one request per line, each a
// JSON array of obfuscated token ids exactly as the server received or produced them, e.g.
//   [17,24811,903,12]
// Empty lines are skipped. Prior corpora: see load_token_docs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "aloepri/audit/metrics.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/formats/token_file.h"

namespace aloepri {
class Tokenizer;
}

namespace aloepri::audit {

using TokenSeq = std::vector<int32_t>;

// Bigram language model of a plaintext prior corpus (what the attacker knows about the text).
class BigramModel {
 public:
  BigramModel() = default;
  // Counts unigrams and the bigrams inside each document (none across documents).
  static BigramModel build(const std::vector<TokenSeq>& docs, int32_t vocab);
  // Re-weights documents: docs[i] counts `weight[i]` times (same-domain priors with another mix).
  static BigramModel build_weighted(const std::vector<TokenSeq>& docs, const std::vector<double>& weight,
                                    int32_t vocab);

  int32_t vocab() const { return vocab_; }
  double tokens() const { return total_; }
  double unigram_count(int32_t y) const { return uni_[size_t(y)]; }
  // log P(y | x): Witten-Bell interpolation of the bigram with the add-1/2 unigram.
  double logp(int32_t x, int32_t y) const;
  double log_unigram(int32_t y) const { return log_uni_[size_t(y)]; }
  // Plaintext ids sorted by prior frequency, most frequent first (ties: smaller id first).
  const std::vector<int32_t>& ranked() const { return ranked_; }
  size_t distinct_bigrams() const { return nfill_; }

 private:
  double count(int32_t x, int32_t y) const;
  void finish();
  int32_t vocab_ = 0;
  double total_ = 0;
  std::vector<double> uni_, pu_, log_uni_, ctx_, types_;  // c(y); Pu(y); log Pu(y); c(x,.); #successors
  std::vector<uint64_t> keys_;                         // open addressing: key = x*V+y+1, 0 = empty
  std::vector<float> vals_;
  size_t nfill_ = 0;
  std::vector<int32_t> ranked_;
};

// Attack outputs: for every obfuscated id, candidate plaintext ids best first (audit/metrics.h Guesses).
// TFMA: candidate j of the obfuscated id at traffic rank r is the prior id at rank r, r+1, r-1,
// r+2, ... (k of them). Ids absent from the traffic get no guess.
Guesses tfma(const std::vector<TokenSeq>& traffic, const BigramModel& prior, int32_t vocab, int k);

struct SdaOptions {
  double seconds = 20.0;       // time budget of the annealing
  uint64_t seed = 1;           // the attacker's own randomness (proposals)
  int k = 100;                 // candidates per id in the result
  // annealing temperature, geometric from t_start to t_end, in log-likelihood units per traffic
  // bigram (the absolute temperature is t * number of bigrams in the traffic)
  double t_start = 5e-5, t_end = 1e-7;
  int rounds = 2;              // annealing schedules in a row, each from the best mapping so far
  int64_t max_iters = -1;      // stop after this many proposals as well (tests); -1 = time only
  // greedy sweeps before the annealing: best move among the `sweep_window` nearest prior ranks,
  // symbols in frequency order, until a sweep gains nothing, max_sweeps or sweep_share of the time
  int sweep_window = 50;
  int max_sweeps = 20;
  double sweep_share = 0.7;
};
struct SdaStats {
  int64_t proposals = 0, accepted = 0;
  int64_t sweeps = 0, sweep_moves = 0;
  // traffic log-likelihood under the prior bigram model: TFMA start, after sweeps, final
  double loglik_start = 0, loglik_sweeps = 0, loglik_end = 0;
};
Guesses sda(const std::vector<TokenSeq>& traffic, const BigramModel& prior, int32_t vocab,
            const SdaOptions& opt, SdaStats* stats = nullptr);

struct StreamPrior {
  std::string name;      // "unrelated: spam e-mails", "same domain", "same distribution"
  BigramModel model;
};

struct StreamAttackInputs {
  int32_t vocab_size = 0;
  std::vector<TokenSeq> traffic;     // obfuscated ids as observed by the server
  std::vector<StreamPrior> priors;   // one TFMA + SDA run per prior
  std::string victim_name;           // e.g. "held-out corpus", "PII e-mails"
  // Scoring only (from the key): truth[i][j] = tau^-1(traffic[i][j]); empty = unscored.
  std::vector<TokenSeq> truth;
  // per traffic token: 0 = not PII, else PII (optional); the value PiiKind + 1 (audit/pii.h, as
  // PiiTokens::kind gives) also splits the recovery by kind (details "pii_by_kind")
  std::vector<std::vector<uint8_t>> pii_mask;
  // per traffic token: PII item number within its request (1-based, 0 = none; optional): an item
  // counts as recovered when every one of its tokens is (details "pii_items_recovered")
  std::vector<std::vector<int32_t>> pii_item;
  std::vector<int32_t> unscored_plain_ids;      // e.g. BOS/EOS: kept in the stream, not scored
  std::vector<int> ks = {1, 10, 100};
  bool run_sda = true;
  SdaOptions sda;
  // When the attacks run over another symbol alphabet than the plaintext ids (the homophonic
  // simulation below: priors and traffic over copies), symbol -> plaintext id applied to every
  // candidate list (duplicates dropped) before scoring. Empty: candidates are plaintext ids.
  std::vector<int32_t> symbol_to_plain;
  // The attacker's grouping of the traffic's symbols (audit/copy_groups.h: ids it believes are copies
  // of one token), symbol -> group, -1 = alone. When given, TFMA and SDA run over the merged
  // stream (each group one symbol, the priors' plaintext alphabet, so at most the priors'
  // vocabulary of groups may occur) and every symbol is answered with its group's candidates,
  // which are plaintext ids (symbol_to_plain must then be empty).
  std::vector<int32_t> symbol_group;
};

// TFMA and SDA against every prior. When truth is given each result is scored: ttrsr (top-1
// token recovery over scored tokens), topk (truth among the first k candidates), vocab_recovery
// (share of distinct observed ids recovered), pii_recovery, bleu4 (corpus BLEU-4 of the recovered
// stream, 0..1), cosine (mean per-request bag-of-tokens cosine), and in details "top100_vocab":
// the share of the 100 most frequent obfuscated ids whose top-1 guess is right (the report's
// "top-100 recovery", method.md section 8), plus top10/top1000_vocab.
std::vector<AttackResult> run_stream_attacks(const StreamAttackInputs& in);

// Scores one attack's guesses against the truth (fills the fields listed above).
void score_stream_guesses(const StreamAttackInputs& in, const Guesses& g, AttackResult& r);

// Traffic files (format above). read_traffic checks every id is in [0, vocab) when vocab > 0.
std::vector<TokenSeq> read_traffic(const std::string& path, int32_t vocab = 0);
void write_traffic(const std::string& path, const std::vector<TokenSeq>& seqs, bool overwrite = false);

// Plaintext corpora as token documents:
//  *.bin    little-endian uint16 ids (token_file.h), documents delimited by the model's BOS ... EOS
//           (`special`; tools/corpus/tokenize.mjs writes them); EOS is dropped (a client sends
//           BOS + text, as Tokenizer::encode(text, true) gives)
//  *.jsonl  one JSON object per line, its "text" field tokenized with `tok` (add_special: BOS)
//  other    plain text, one document per line, tokenized with `tok`
// max_tokens > 0 stops after that many tokens (whole documents, the last one cut). `sources`, when
// given, receives each document's "source" (or "group") field of a .jsonl file ("" otherwise).
std::vector<TokenSeq> load_token_docs(const std::string& path, const Tokenizer* tok, const DocumentIds& special,
                                      int64_t max_tokens = 0, std::vector<std::string>* sources = nullptr);
// The document delimiters of a model: its config's bos/eos ids, or its tokenizer's.
DocumentIds document_ids(const ModelConfig& config);
DocumentIds document_ids(const Tokenizer& tok);

// Weights that give every source the same total number of tokens (a prior of the same genres
// in another mixture than the victim's).
std::vector<double> balance_sources(const std::vector<TokenSeq>& docs, const std::vector<std::string>& sources);

// Homophonic vocabulary (simulation for issue 14): plaintext id t gets c_t >= 1 symbols (its
// copies); the extra copies, `extra` in all, go to ids in proportion to sqrt(frequency) of a
// public frequency table (largest remainders). A client picks one copy of t uniformly at random
// per occurrence; the server sees copies through a secret permutation of all V + extra ids.
struct Homophones {
  std::vector<int32_t> first;  // [V + 1]: the symbols of plaintext id t are first[t] .. first[t+1]-1
  std::vector<int32_t> base;   // [V + extra]: symbol -> plaintext id
  int32_t symbols() const { return int32_t(base.size()); }
  int32_t copies(int32_t t) const { return first[size_t(t) + 1] - first[size_t(t)]; }
};
Homophones make_homophones(const std::vector<double>& freq, int64_t extra);
// Each token replaced by one of its copies, uniformly at random from `seed`.
std::vector<TokenSeq> homophonic_encode(const std::vector<TokenSeq>& docs, const Homophones& h, uint64_t seed);

// First n tokens of a set of documents (the last one cut): traffic of a given size.
std::vector<TokenSeq> take_tokens(const std::vector<TokenSeq>& docs, int64_t n);

}  // namespace aloepri::audit
