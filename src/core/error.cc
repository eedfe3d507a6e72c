// Out-of-line part of the error builder (see error.h).
#include "core/error.h"

#include <exception>

namespace qs::detail {

ErrorBuilder::~ErrorBuilder() noexcept(false) {
  std::string m = msg_.str();
  if (m.empty()) m = cond_ ? std::string("check failed: ") + cond_ : std::string("failure");
  // Source location helps developers; users read the message first.
  const char* base = file_;
  for (const char* p = file_; *p; ++p)
    if (*p == '/') base = p + 1;
  m += " [" + std::string(base) + ":" + std::to_string(line_) + "]";
  if (std::uncaught_exceptions() > 0) return;  // never throw while unwinding
  throw Error(m);
}

}  // namespace qs::detail
