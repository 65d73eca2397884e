// Subcommand registry: each src/cli/cmd_*.cpp registers itself with ALOEPRI_COMMAND, so adding a
// command never touches main.cpp.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace aloepri::cli {

// setup() adds options to `sub` and returns the function to run after parsing (returns exit code).
using CommandSetup = std::function<std::function<int()>(CLI::App& sub)>;

struct CommandInfo {
  std::string name, description;
  CommandSetup setup;
  int order;  // position in --help
};

std::vector<CommandInfo>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string description, int order, CommandSetup setup) {
    command_registry().push_back({std::move(name), std::move(description), std::move(setup), order});
  }
};

#define ALOEPRI_COMMAND(ident, name, order, description, setup_fn) \
  static ::aloepri::cli::CommandRegistrar ident##_registrar(name, description, order, setup_fn)

// Shared helpers for commands.
std::vector<int64_t> parse_ids_csv(const std::string& csv);  // "1,2,3" -> ids; throws on junk

}  // namespace aloepri::cli
