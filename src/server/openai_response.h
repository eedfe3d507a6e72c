// Building OpenAI response bodies: the non-streaming completion / chat.completion objects, the streaming
// chunks (text_completion / chat.completion.chunk) framed as Server-Sent Events, usage, and logprobs in each
// endpoint's shape (completions: tokens / token_logprobs / top_logprobs / text_offset; chat: content[] with
// token, logprob, bytes, top_logprobs). ChoiceResult accumulates one choice's events.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace qs::server {

using ojson = nlohmann::ordered_json;

// One choice, accumulated from its engine events.
struct ChoiceResult {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<runtime::TokenLogprob> token_logprobs;
  std::vector<std::vector<runtime::TokenLogprob>> top_logprobs;
  runtime::FinishReason finish = runtime::FinishReason::kNone;
  std::string error;
  int32_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
  void add(const runtime::RequestOutput& o);
};

// "stop", "length", "abort", "error"; null while unfinished.
ojson finish_reason_json(runtime::FinishReason r);
ojson usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_prompt_tokens);
// "cmpl-..." / "chatcmpl-..." with 24 random hex digits.
std::string make_request_id(Endpoint e);
// A JSON body as text (invalid UTF-8 replaced, never throws).
std::string dump(const ojson& j);
// One SSE event: "data: <json>\n\n".
std::string sse_event(const ojson& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

class ResponseBuilder {
 public:
  ResponseBuilder(Endpoint endpoint, std::string id, int64_t created, std::string model,
                  const tokenizer::Tokenizer* tok, int32_t logprobs)
      : endpoint_(endpoint), id_(std::move(id)), created_(created), model_(std::move(model)), tok_(tok),
        logprobs_(logprobs) {}

  // Logprobs of `n` tokens starting at `first` of `tokens` (completions shape advances *text_offset).
  ojson logprobs_json(const std::vector<int32_t>& tokens, const std::vector<runtime::TokenLogprob>& lps,
                      const std::vector<std::vector<runtime::TokenLogprob>>& tops, size_t first, size_t n,
                      int64_t* text_offset) const;
  // The full non-streaming response. `prefix[i]`: text put before choice i's text (echo), may be empty.
  ojson full_response(const std::vector<ChoiceResult>& choices, const std::vector<std::string>& prefix,
                      const ojson& usage) const;
  // A streaming chunk for one choice: text (delta content), optional logprobs, finish (null when kNone).
  // Chat: `role_only` makes the opening {"role": "assistant", "content": ""} delta.
  ojson chunk(int index, const std::string& text, const ojson& logprobs, runtime::FinishReason finish,
              bool role_only = false) const;
  // The final usage-only chunk (stream_options.include_usage): choices [] and usage.
  ojson usage_chunk(const ojson& usage) const;

  // The bytes a token stands for (special tokens as their text), not necessarily valid UTF-8; "" for an id the
  // tokenizer does not have (or without a tokenizer).
  std::string token_bytes(int32_t id) const;

 private:
  ojson envelope(const char* object) const;
  Endpoint endpoint_;
  std::string id_;
  int64_t created_;
  std::string model_;
  const tokenizer::Tokenizer* tok_;  // may be null (a server without tokenizer: token bytes are empty)
  int32_t logprobs_;
};

}  // namespace qs::server
