// The client's privacy proxy: an OpenAI-compatible HTTP server (/v1/models, /v1/completions,
// /v1/chat/completions, /health) in front of an engine serving the obfuscated model. Requests are
// tokenized and chat-templated here, in plaintext; the ids are mapped through tau and sent to the
// engine (backend.h); the engine's ids are mapped back with tau^-1 and detokenized incrementally
// (a UTF-8 character split over byte tokens comes out whole); stop strings are applied to the
// plaintext, holding back text that could still become a stop string; generation ends at the
// plaintext end tokens. Plaintext never leaves this process and is never logged unless
// log_plaintext is set. Links only the client and core modules (no heavy math).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "aloepri/client/backend.h"
#include "aloepri/core/homophones.h"
#include "aloepri/core/rng.h"
#include "aloepri/client/tokenizer.h"

namespace aloepri {

// tau and its inverse over a vocabulary of n ids (keyfile.h derive_tau), or the homophonic map
// (homophones.h) when copies are given: n plaintext ids, n' obfuscated ids.
class TokenMap {
 public:
  TokenMap(const Seed& seed, int64_t n, const std::vector<int64_t>& copies = {});
  int64_t size() const { return map_.size(); }              // n': ids the server may send back
  int64_t plain_size() const { return map_.plain_size(); }  // n
  // tau; with copies, one copy of `plain` drawn uniformly per call from the OS CSPRNG (so the
  // server cannot predict it); throws Error when out of range.
  int64_t to_server(int64_t plain) const;
  int64_t from_server(int64_t obf) const;    // tau^-1 (every copy); throws BackendError(502) when out of range
  std::vector<int64_t> to_server(std::span<const int32_t> plain) const;
  std::vector<int64_t> all_copies(int64_t plain) const;  // every obfuscated id of `plain`
  const VocabMap& map() const { return map_; }

 private:
  VocabMap map_;
};

// Plaintext output of one generation: ids in, text out, with stop strings. push() returns the text
// that may be sent now; after a stop string completes, stopped() is true and the text before it
// has been returned (the stop string and whatever follows are dropped, as OpenAI does).
class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::vector<std::string> stop);
  std::string push(int32_t id);
  std::string finish();  // end of generation: the held-back text (unless stopped)
  bool stopped() const { return stopped_; }

 private:
  std::string take(std::string piece);
  IncrementalDecoder dec_;
  std::vector<std::string> stop_;
  std::string pending_;
  bool stopped_ = false;
};

struct ProxyOptions {
  std::string host = "127.0.0.1";
  int port = 8080;              // 0: a free port (see ProxyServer::port())
  std::string model_name;       // what /v1/models lists and responses name (default: the tokenizer dir's name)
  bool log_plaintext = false;   // log prompts and answers (off: only sizes and timings)
  bool quiet = false;           // no per-request log lines
  int threads = 64;             // HTTP worker threads (each open client connection holds one)
  size_t max_body = 8u << 20;   // request body limit, bytes
  // Where log lines go (default: stderr).
  std::function<void(const std::string&)> logger;
  // Sees every exchange with the engine (used by `aloepri demo` to show what the server saw).
  struct Exchange {
    std::vector<int64_t> plain_prompt, sent_prompt;  // plaintext ids, what the engine received
    std::vector<int64_t> received, plain_answer;     // what the engine sent back, mapped back
    double ttft_s = 0, total_s = 0;                  // at the proxy: request start to first id / end
  };
  std::function<void(const Exchange&)> observer;
};

// What the proxy needs from the key and the plaintext tokenizer.
struct ProxyModel {
  Tokenizer tokenizer;
  Seed seed{};
  int64_t vocab_size = 0;             // n of tau (the model's vocab_size from the key record)
  std::vector<int64_t> copies;        // homophone copies per id (key record); empty = none
  std::vector<int32_t> end_ids;       // plaintext ids that end generation (EOS, end-of-turn)
  // Loads the key (0600) and the tokenizer directory; checks that the key has obfuscated a model
  // whose vocabulary and published tau(eos) match this tokenizer. Throws Error.
  static ProxyModel load(const std::string& key_path, const std::string& tokenizer_dir);
};

class ProxyServer {
 public:
  ProxyServer(ProxyModel model, BackendOptions backend, ProxyOptions opt);
  ~ProxyServer();
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;
  // Binds (throws Error when the address is unavailable) and serves on a background thread.
  void start();
  int port() const { return port_; }
  std::string url() const;  // "http://HOST:PORT"
  void stop();              // stops accepting; in-flight requests end
  void wait();              // blocks until stop()

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace aloepri
