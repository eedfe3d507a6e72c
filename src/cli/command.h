// Subcommand registry of the `qserve` binary. Each subcommand lives in its own file in src/cli/ and registers
// itself with a static CommandRegistrar; main.cc builds the CLI11 app from the registry. A command's callback
// may throw qs::Error: main prints "error: <message>" and exits with status 1.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace qs::cli {

struct Command {
  std::string name;
  std::string help;
  // Adds the options to `sub` and sets its callback.
  std::function<void(CLI::App* sub)> setup;
};

std::vector<Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string help, std::function<void(CLI::App*)> setup) {
    command_registry().push_back({std::move(name), std::move(help), std::move(setup)});
  }
};

}  // namespace qs::cli
