// qs::Status: the exception-free result of kernel launchers and other hot-path calls (plan/run split:
// a run step allocates nothing, never syncs and reports failure through Status).
#pragma once

#include <string>
#include <utility>

#include "core/error.h"

namespace qs {

class Status {
 public:
  Status() = default;  // OK
  static Status ok() { return Status(); }
  static Status error(std::string msg) {
    Status s;
    s.ok_ = false;
    s.msg_ = std::move(msg);
    return s;
  }
  bool is_ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const std::string& message() const { return msg_; }
  // Converts a failure into a qs::Error (for callers that use exceptions).
  void throw_if_error() const {
    if (!ok_) throw Error(msg_);
  }

 private:
  bool ok_ = true;
  std::string msg_;
};

}  // namespace qs

// Returns early from a Status-returning function when `expr` fails.
#define QS_RETURN_IF_ERROR(expr)          \
  do {                                    \
    ::qs::Status _qs_st = (expr);         \
    if (!_qs_st.is_ok()) return _qs_st;   \
  } while (0)
