// Starts and stops the llama.cpp harness (harness/llamacpp/server.mjs, node-llama-cpp) as a child
// process serving one GGUF over llama-server's HTTP API on loopback. Used by the demo, the
// end-to-end tests and the benchmarks; the proxy talks to whatever URL it is given instead.
#pragma once
#include <sys/types.h>

#include <string>

namespace aloepri {

struct EngineProcessOptions {
  std::string model;               // GGUF path
  std::string host = "127.0.0.1";
  int port = 0;                    // 0: pick a free loopback port
  int threads = 2;
  int ctx = 2048;
  std::string engine_dir;          // default: $ALOEPRI_ENGINE_DIR or <source>/harness/llamacpp
  std::string log_path;            // server stdout/stderr (default: /dev/null)
  double startup_timeout_s = 120;
};

class EngineProcess {
 public:
  explicit EngineProcess(EngineProcessOptions o);  // spawns, waits for GET /health == ok
  ~EngineProcess();                                // SIGTERM, then SIGKILL after 5 s
  EngineProcess(const EngineProcess&) = delete;
  EngineProcess& operator=(const EngineProcess&) = delete;
  std::string url() const;                         // "http://127.0.0.1:PORT"
  int port() const { return port_; }
  void stop();

 private:
  EngineProcessOptions o_;
  pid_t pid_ = -1;
  int port_ = 0;
};

int find_free_port();                               // a currently free loopback TCP port
std::string default_engine_dir();

}  // namespace aloepri
