// Locations the tests need: the source tree, the build tree, npm packages, a scratch dir.
#pragma once
#include <string>

namespace aloepri::testing {
std::string source_dir();
std::string binary_dir();
std::string aloepri_exe();                         // the built `aloepri` command
std::string node_modules();                        // <source>/node_modules (vocabularies etc.)
std::string vocab_dir(const std::string& which);   // "qwen3" | "llama3" | "llama2": vocab/<which> (written by setup from npm)
std::string scratch_dir(const std::string& name);  // fresh empty dir under the build tree
// Run a shell command, capture stdout (and stderr if merge), return exit status.
int run_command(const std::string& cmd, std::string* out = nullptr, bool merge_stderr = false);
}  // namespace aloepri::testing
