#include "aloepri/client/engine_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <httplib.h>
#include <thread>
#include <vector>

#include "aloepri/core/error.h"

extern char** environ;

namespace aloepri {

#ifndef ALOEPRI_SOURCE_DIR_FOR_ENGINE
#define ALOEPRI_SOURCE_DIR_FOR_ENGINE "."
#endif

std::string default_engine_dir() {
  if (const char* e = std::getenv("ALOEPRI_ENGINE_DIR")) return e;
  return std::string(ALOEPRI_SOURCE_DIR_FOR_ENGINE) + "/harness/llamacpp";
}

int find_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error("engine", "cannot create a socket", kExitError);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw Error("engine", "cannot find a free port", kExitError);
  }
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

EngineProcess::EngineProcess(EngineProcessOptions o) : o_(std::move(o)) {
  if (o_.engine_dir.empty()) o_.engine_dir = default_engine_dir();
  std::string script = o_.engine_dir + "/server.mjs";
  if (!std::filesystem::exists(script))
    throw Error(script, "llama.cpp harness not found (run ./setup.sh, or set ALOEPRI_ENGINE_DIR)", kExitError);
  if (!std::filesystem::exists(o_.engine_dir + "/node_modules/node-llama-cpp"))
    throw Error(o_.engine_dir, "node-llama-cpp is not installed (run ./setup.sh)", kExitError);
  if (!std::filesystem::exists(o_.model)) throw Error(o_.model, "GGUF model not found", kExitBadInput);
  port_ = o_.port ? o_.port : find_free_port();
  std::vector<std::string> args = {"node",     script, "--model", o_.model, "--host", o_.host,
                                   "--port",   std::to_string(port_), "--threads", std::to_string(o_.threads),
                                   "--ctx",    std::to_string(o_.ctx)};
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  std::string log = o_.log_path.empty() ? "/dev/null" : o_.log_path;
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  int rc = posix_spawnp(&pid_, "node", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw Error("node", "cannot start the llama.cpp harness (is Node 20 installed?)", kExitError);

  httplib::Client cli(o_.host, port_);
  cli.set_connection_timeout(1, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.startup_timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      throw Error(o_.model, "llama.cpp harness exited during startup" +
                                (o_.log_path.empty() ? std::string() : " (see " + o_.log_path + ")"),
                  kExitError);
    }
    if (auto r = cli.Get("/health"); r && r->status == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop();
  throw Error(o_.model, "llama.cpp harness did not become healthy in time", kExitError);
}

EngineProcess::~EngineProcess() { stop(); }

std::string EngineProcess::url() const { return "http://" + o_.host + ":" + std::to_string(port_); }

void EngineProcess::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  for (int i = 0; i < 50; ++i) {
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

}  // namespace aloepri
