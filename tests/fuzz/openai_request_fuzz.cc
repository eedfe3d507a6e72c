// Fuzz target: the HTTP server's request path without sockets: a request body (arbitrary bytes) -> JSON ->
// parse_completion_request and parse_chat_request (server/openai_request.h), and a refusal -> its OpenAI error
// body. A refusal must be an ApiError whose status is 4xx and whose body is valid JSON in the error shape; an
// accepted request must satisfy the limits the server relies on (n, prompts x n, prompt lengths and ids, sampling
// ranges, logprobs, stop strings). Anything else (another exception, a crash, a sanitizer report) is a finding.
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "server/api_error.h"
#include "server/openai_request.h"

namespace {

using qs::server::OpenAiRequest;

void check_accepted(const OpenAiRequest& r, bool chat) {
  using namespace qs::server;
  if (r.n < 1 || r.n > kMaxN) std::abort();
  if (r.max_tokens && *r.max_tokens < 1) std::abort();
  if (!(r.sampling.temperature >= 0 && r.sampling.temperature <= 2)) std::abort();
  if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1)) std::abort();
  if (r.sampling.top_k < 0) std::abort();
  if (r.logprobs < -1 || r.logprobs > kMaxLogprobs) std::abort();
  if (r.stop.size() > 64) std::abort();
  for (const auto& s : r.stop)
    if (s.empty()) std::abort();
  if (chat) {
    if (!r.messages.is_array() || r.messages.empty() || !r.prompts.empty()) std::abort();
    for (const auto& m : r.messages)
      if (!m.is_object() || !m.contains("role") || !m["content"].is_string()) std::abort();
    return;
  }
  if (r.prompts.empty() || int(r.prompts.size()) > kMaxPrompts || int(r.prompts.size()) * r.n > kMaxChoices)
    std::abort();
  if (r.echo && r.logprobs >= 0) std::abort();
  for (const auto& p : r.prompts) {
    if (!p.is_ids) continue;
    if (p.ids.empty() || p.ids.size() > size_t(kMaxPromptTokens)) std::abort();
    for (int32_t id : p.ids)
      if (id < 0) std::abort();
  }
}

void check_refused(const qs::server::ApiError& e) {
  if (e.status() < 400 || e.status() > 499) std::abort();
  const auto j = nlohmann::json::parse(e.body(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("error") || !j["error"].contains("message") ||
      !j["error"]["message"].is_string())
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::ordered_json body;
  try {
    body = nlohmann::ordered_json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // the server answers malformed JSON itself (400 invalid_json)
  }
  for (const bool chat : {false, true}) {
    try {
      const OpenAiRequest r = chat ? qs::server::parse_chat_request(body) : qs::server::parse_completion_request(body);
      check_accepted(r, chat);
    } catch (const qs::server::ApiError& e) {
      check_refused(e);
    }
  }
  return 0;
}
