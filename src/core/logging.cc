// Logging implementation (see logging.h).
#include "core/logging.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace qs {

LogLevel log_level() {
  static const LogLevel level = [] {
    const char* e = std::getenv("QSERVE_LOG");
    if (!e) return LogLevel::INFO;
    if (!std::strcmp(e, "debug")) return LogLevel::DEBUG;
    if (!std::strcmp(e, "warn")) return LogLevel::WARN;
    if (!std::strcmp(e, "error")) return LogLevel::ERROR;
    return LogLevel::INFO;
  }();
  return level;
}

LogLine::~LogLine() {
  static std::mutex mu;
  static const char* kNames[] = {"debug", "info", "warn", "error"};
  std::lock_guard<std::mutex> lk(mu);
  std::fprintf(stderr, "[qserve %s] %s\n", kNames[int(level_)], os_.str().c_str());
}

}  // namespace qs
