// Error handling for qserve: one exception type (qs::Error) for bad input and broken invariants, built with
// streaming macros so the message can carry context:
//   QS_CHECK(n > 0) << "tensor " << name << " has no elements";
//   QS_FAIL() << "unknown architecture '" << arch << "'";
// Library code throws; only the CLI and server boundaries turn an Error into a message, an exit code or an
// HTTP 4xx/5xx. Kernel launchers return qs::Status instead (see status.h) so they stay exception-free.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace qs {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

// Collects a message through operator<< and throws qs::Error when the full expression ends.
class ErrorBuilder {
 public:
  ErrorBuilder(const char* file, int line, const char* cond) : file_(file), line_(line), cond_(cond) {}
  ErrorBuilder(const ErrorBuilder&) = delete;
  ErrorBuilder& operator=(const ErrorBuilder&) = delete;
  ~ErrorBuilder() noexcept(false);

  template <typename T>
  ErrorBuilder& operator<<(const T& v) {
    msg_ << v;
    return *this;
  }

 private:
  const char* file_;
  int line_;
  const char* cond_;  // nullptr for QS_FAIL
  std::ostringstream msg_;
};

}  // namespace detail
}  // namespace qs

// Internal invariant or validated input: throws qs::Error with the streamed message (and the failed condition
// and source location, for debugging).
#define QS_CHECK(cond) \
  if (cond) {          \
  } else               \
    ::qs::detail::ErrorBuilder(__FILE__, __LINE__, #cond)

#define QS_FAIL() ::qs::detail::ErrorBuilder(__FILE__, __LINE__, nullptr)
