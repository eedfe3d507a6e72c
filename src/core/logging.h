// Minimal leveled logging to stderr: QS_LOG(INFO) << "loaded " << n << " tensors";
// Level from QSERVE_LOG (debug, info, warn, error; default info).
#pragma once

#include <sstream>

namespace qs {

enum class LogLevel { DEBUG = 0, INFO = 1, WARN = 2, ERROR = 3 };
LogLevel log_level();

class LogLine {
 public:
  explicit LogLine(LogLevel l) : level_(l) {}
  ~LogLine();
  template <typename T>
  LogLine& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream os_;
};

}  // namespace qs

#define QS_LOG(level) \
  if (::qs::LogLevel::level < ::qs::log_level()) { \
  } else                                           \
    ::qs::LogLine(::qs::LogLevel::level)
