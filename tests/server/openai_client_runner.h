// Runs tests/server/openai_client/client_test.mjs (the official `openai` npm package) against a server port.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace qs::server::test {

inline std::filesystem::path openai_client_dir() {
  return std::filesystem::path(__FILE__).parent_path() / "openai_client";
}

// "" when the client can run, else why not.
inline std::string openai_client_unavailable() {
  if (std::system("command -v node > /dev/null 2>&1") != 0) return "node not found: openai client test skipped";
  if (!std::filesystem::exists(openai_client_dir() / "node_modules" / "openai" / "package.json"))
    return "the openai npm package is not installed (run scripts/setup): " + (openai_client_dir() / "node_modules").string();
  return "";
}

// Exit status of `node client_test.mjs port model`; its stdout and stderr go to `out`.
inline int run_openai_client(int port, const std::string& model, std::string& out) {
  const std::string cmd = "cd '" + openai_client_dir().string() + "' && node client_test.mjs " + std::to_string(port) +
                          " '" + model + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace qs::server::test
