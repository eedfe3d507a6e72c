// Entry point of the `qserve` binary: builds the subcommand tree from the registry (command.h) and turns
// qs::Error into a one-line message and exit status 1.
#include <algorithm>
#include <cstdio>
#include <exception>

#include "cli/command.h"
#include "core/error.h"

namespace qs::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace qs::cli

int main(int argc, char** argv) {
  CLI::App app{"qserve: W4A8KV4 (QoQ) quantization and LLM serving"};
  app.require_subcommand(1);
  auto& cmds = qs::cli::command_registry();
  std::sort(cmds.begin(), cmds.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (auto& c : cmds) c.setup(app.add_subcommand(c.name, c.help));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qs::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
