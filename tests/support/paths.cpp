#include "support/paths.h"

#include <sys/wait.h>

#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace fs = std::filesystem;

namespace aloepri::testing {

std::string source_dir() { return ALOEPRI_SOURCE_DIR; }
std::string binary_dir() { return ALOEPRI_BINARY_DIR; }
std::string aloepri_exe() { return binary_dir() + "/aloepri"; }
std::string node_modules() { return source_dir() + "/node_modules"; }

std::string vocab_dir(const std::string& which) {
  std::string d = source_dir() + "/vocab/" + which;
  if (!fs::exists(d + "/tokenizer.json"))
    throw std::runtime_error("vocabulary not installed: " + d + " (run ./setup.sh)");
  return d;
}

// Per process: ctest runs the tests of one executable as parallel processes, and two of them
// must never wipe each other's directory. Removed at exit unless ALOEPRI_KEEP_SCRATCH is set.
static fs::path process_scratch_root() {
  static const fs::path root = [] {
    fs::path r = fs::path(binary_dir()) / "test-scratch" / ("p" + std::to_string(::getpid()));
    if (!std::getenv("ALOEPRI_KEEP_SCRATCH"))
      std::atexit([] {
        std::error_code ec;
        fs::remove_all(fs::path(binary_dir()) / "test-scratch" / ("p" + std::to_string(::getpid())), ec);
      });
    return r;
  }();
  return root;
}

std::string scratch_dir(const std::string& name) {
  fs::path p = process_scratch_root() / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

int run_command(const std::string& cmd, std::string* out, bool merge_stderr) {
  std::string full = merge_stderr ? cmd + " 2>&1" : cmd;
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0)
    if (out) out->append(buf.data(), n);
  int st = ::pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace aloepri::testing
