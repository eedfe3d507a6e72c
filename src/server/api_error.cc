// OpenAI-shaped error bodies (see api_error.h).
#include "server/api_error.h"

#include <nlohmann/json.hpp>

namespace qs::server {

const char* error_type_for_status(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string error_body(int status, const std::string& message, const std::string& type, const std::string& param,
                       const std::string& code) {
  nlohmann::json e = {{"message", message},
                      {"type", type.empty() ? error_type_for_status(status) : type},
                      {"param", param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param)},
                      {"code", code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code)}};
  return nlohmann::json{{"error", e}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ApiError::body() const { return error_body(status_, what(), type_, param_, code_); }

void bad_param(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

}  // namespace qs::server
