// The OpenAI error shape: every 4xx/5xx the server answers carries
//   {"error": {"message": "...", "type": "...", "param": "..." | null, "code": "..." | null}}
// ApiError is thrown by request parsing and validation (openai_request.h) and caught at the HTTP boundary
// (server.cc), which turns it into the status and the JSON body. `type` follows OpenAI's names:
// invalid_request_error (400, 404, 405, 413, 415), authentication_error (401), rate_limit_error (429),
// service_unavailable_error (503), server_error (500).
#pragma once

#include <string>

#include "core/error.h"

namespace qs::server {

class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "")
      : Error(message), status_(status), type_(std::move(type)), param_(std::move(param)), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // The JSON body (param and code are null when empty).
  std::string body() const;

 private:
  int status_;
  std::string type_, param_, code_;
};

// A 400 invalid_request_error about `param`.
[[noreturn]] void bad_param(const std::string& param, const std::string& message);

// The JSON error body for any status (type derived from the status when empty).
std::string error_body(int status, const std::string& message, const std::string& type = "",
                       const std::string& param = "", const std::string& code = "");
// OpenAI's error type name for an HTTP status.
const char* error_type_for_status(int status);

}  // namespace qs::server
