// Errors that name what was wrong and where (file, tensor, field), plus the CLI's exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace aloepri {

// Exit codes of the `aloepri` command (documented in README and `aloepri --help`).
enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,        // runtime failure (I/O, engine, internal)
  kExitUsage = 2,        // bad command line
  kExitBadInput = 3,     // malformed / unsupported model, config, tokenizer or key file
  kExitOutputExists = 4, // refusing to overwrite an existing output
  kExitKeyMismatch = 5,  // key does not belong to this model / wrong permissions / version
};

// An error carrying the place it concerns ("model.safetensors", "tensor 'lm_head.weight'",
// "config.json: num_attention_heads"). what() is one line: "<where>: <message>".
class Error : public std::runtime_error {
 public:
  Error(const std::string& where, const std::string& message, ExitCode code = kExitBadInput)
      : std::runtime_error(where.empty() ? message : where + ": " + message),
        where_(where), message_(message), code_(code) {}
  const std::string& where() const { return where_; }
  const std::string& message() const { return message_; }
  ExitCode code() const { return code_; }

 private:
  std::string where_, message_;
  ExitCode code_;
};

// Convenience: throw Error(where, message) unless cond holds.
inline void require(bool cond, const std::string& where, const std::string& message,
                    ExitCode code = kExitBadInput) {
  if (!cond) throw Error(where, message, code);
}

}  // namespace aloepri
