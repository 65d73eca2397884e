// The engine side of the privacy proxy: sends obfuscated token ids to an unmodified inference
// server and reads obfuscated token ids back, streaming. Three wire protocols:
//  - llamacpp: llama-server's POST /completion ({"prompt":[ids], "n_predict", ...}; the ids come
//    back in "tokens"; streaming = one SSE event per token). harness/llamacpp/server.mjs speaks it.
//  - vllm:     vLLM's OpenAI POST /v1/completions with a token-id prompt and "return_token_ids":
//    true (ids in choices[0].token_ids; streamed chunks carry the new ids), "stop_token_ids".
//  - sglang:   SGLang's native POST /generate with "input_ids" and "sampling_params"; ids in
//    "output_ids" (streamed chunks carry all ids so far unless the server runs with
//    --incremental-streaming-output; meta_info.completion_tokens tells the two apart).
// Nothing here sees plaintext: the caller maps ids through tau before and tau^-1 after.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace aloepri {

enum class BackendKind { LlamaCpp, VLLM, SGLang };
BackendKind parse_backend_kind(const std::string& s);  // "llamacpp" | "vllm" | "sglang"; throws Error
const char* backend_kind_name(BackendKind k);

struct BackendOptions {
  BackendKind kind = BackendKind::LlamaCpp;
  std::string url;             // "http://host:port" (a path prefix is allowed: "http://h:p/prefix")
  std::string model;           // vllm: the served model name (default: the first of GET /v1/models)
  double connect_timeout_s = 10;
  double read_timeout_s = 300; // longest silence while waiting for the next token
};

struct BackendRequest {
  std::vector<int64_t> prompt;    // obfuscated ids
  int64_t max_tokens = -1;        // -1: until an end token or the context is full
  double temperature = 1.0;
  double top_p = 1.0;
  double min_p = 0.0;
  int64_t top_k = 0;              // <= 0: off
  std::optional<int64_t> seed;
  std::vector<int64_t> stop_ids;  // obfuscated ids that end generation (tau of the end tokens)
  bool stream = true;             // ask the engine to stream (ids then arrive token by token)
};

struct BackendResult {
  std::vector<int64_t> ids;       // every generated id received (obfuscated)
  std::string finish;             // the engine's reason as it said it ("eos", "limit", "stop", ...), "" if none
  bool cancelled = false;         // the caller stopped reading (on_ids returned false)
};

// A backend failure the proxy turns into an HTTP error: status 502 (bad gateway: unreachable,
// HTTP error, malformed answer), 504 (timeout) or 400 (the engine rejected the request, e.g. a
// prompt longer than its context). what() never contains request or response bodies beyond the
// engine's own error message.
class BackendError : public std::runtime_error {
 public:
  BackendError(int status, const std::string& msg) : std::runtime_error(msg), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

class Backend {
 public:
  explicit Backend(BackendOptions o);
  const BackendOptions& options() const { return o_; }
  // Called with each batch of new ids as they arrive; return false to stop (the connection is
  // closed, which makes the engine abandon the request).
  using OnIds = std::function<bool(std::span<const int64_t> ids)>;
  // Thread-safe (one HTTP connection per call). Throws BackendError.
  BackendResult generate(const BackendRequest& req, const OnIds& on_ids) const;
  // GET /health of the engine; *why says what failed.
  bool healthy(std::string* why = nullptr) const;

  // The wire format, exposed for tests: the request body and path for a kind.
  nlohmann::json request_body(const BackendRequest& req) const;
  std::string request_path() const;

 private:
  BackendOptions o_;
  std::string host_url_, prefix_;
  mutable std::mutex model_m_;
  mutable std::string model_;  // resolved vllm model name (looked up once)
  std::string resolve_model() const;
};

}  // namespace aloepri
