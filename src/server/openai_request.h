// Parsing and validation of OpenAI request bodies for POST /v1/completions and POST /v1/chat/completions into
// one OpenAiRequest. Everything that can be checked without the tokenizer or the engine is checked here and
// reported as ApiError 400 naming the field (wrong JSON type, out-of-range value, unsupported feature);
// lengths against the context are checked by the server after tokenization.
// Conventions (OpenAI / vLLM): unknown fields are ignored; null means "not given"; integer fields accept
// integral floats (16.0) but not 16.5, strings or booleans. Accepted: model, prompt (a string, an array of
// strings, an array of token ids, an array of token-id arrays), messages (content a string or an array of
// {"type":"text"} parts), max_tokens / max_completion_tokens, temperature [0, 2], top_p (0, 1], top_k (-1 or 0:
// off), seed, stop (string or array), n [1, 128], stream, stream_options.include_usage, logprobs (completions:
// an integer 0..20; chat: a boolean with top_logprobs 0..20), echo (completions), and vLLM's extensions
// repetition_penalty, ignore_eos (generate exactly max_tokens: benchmarks), stop_token_ids, add_generation_prompt,
// return_token_ids (each choice / streamed chunk also carries the generated ids as "token_ids"). Token-id prompts:
// non-empty, at most kMaxPromptTokens ids, each in [0, 2^31) here and in [0, vocab) in the server.
// Refused with a clear 400 rather than silently ignored: a non-zero presence/frequency penalty, a non-empty
// logit_bias, suffix, best_of > n, tools, response_format other than text, non-text message parts, echo together
// with logprobs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/sampling.h"

namespace qs::server {

enum class Endpoint { kCompletions, kChat };

struct PromptInput {
  bool is_ids = false;
  std::string text;           // !is_ids
  std::vector<int32_t> ids;   // is_ids
};

struct OpenAiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::vector<PromptInput> prompts;          // completions: one or more
  nlohmann::ordered_json messages;           // chat: [{"role", "content"(string)}...]
  bool add_generation_prompt = true;         // chat
  std::optional<int64_t> max_tokens;         // not given: completions 16, chat the rest of the context
  int32_t n = 1;
  model::SamplingParams sampling;            // temperature defaults to 1 (OpenAI)
  bool seed_given = false;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool stream = false, include_usage = false;
  int32_t logprobs = -1;  // engine convention: -1 none, k >= 0 the sampled token's logprob and the top k
  bool echo = false;      // completions: the prompt text before the completion
  bool return_token_ids = false;  // vLLM's extension: "token_ids" in every choice / chunk
};

// Limits (exposed for tests).
inline constexpr int kMaxN = 128;
inline constexpr int kMaxPrompts = 64;
inline constexpr int kMaxChoices = 256;  // prompts x n
inline constexpr int kMaxLogprobs = 20;
inline constexpr int kMaxPromptTokens = 1 << 20;  // ids in one token-id prompt

// `body` must be a JSON value (the server answers malformed JSON itself); anything else in it is validated here.
OpenAiRequest parse_completion_request(const nlohmann::ordered_json& body);
OpenAiRequest parse_chat_request(const nlohmann::ordered_json& body);

}  // namespace qs::server
