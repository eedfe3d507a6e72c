// A simple generation loop on the reference Model: prefill all prompts in one batched forward, then decode all
// unfinished sequences together, one token per step, each with its own Sampler (seeded with the same seed, so a
// sequence gets the same tokens alone or in a batch). Stops per sequence on an EOS id, a stop string, the token
// budget, or the model's context length. Text is optional: pass a per-sequence TokenText function (e.g. a
// tokenizer IncrementalDecoder's push) to get text, stop strings and streaming; without one, only ids.
// Streaming holds back text that could be the start of a stop string and never emits the stop string itself.
// (The serving engine with continuous batching and paged KV is runtime/engine; this is the CLI/test loop.)
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/sampling.h"

namespace qs::runtime {

using model::Sampler;
using model::SamplingParams;

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<int32_t> eos_ids;           // the EOS id is kept in tokens, its text is not emitted
  std::vector<std::string> stop_strings;  // need text (TokenText); the stop string is cut from the text
  model::KvMode kv_mode = model::KvMode::kFp32;
  // KV4 only: the prompt attends to its own K/V unquantized (the engine's prefill kernel); decode steps read the
  // quantized cache either way. Off: everything quantized (model/kv_cache.h).
  bool fp_prefill_self_kv = false;
};

enum class StopReason { kMaxTokens, kEos, kStopString, kContextFull };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (EOS included when it stopped the sequence)
  std::string text;             // generated text (when a TokenText was given), stop string excluded
  StopReason reason = StopReason::kMaxTokens;
};

struct GenerateStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  double tokens_per_second() const {  // generated tokens / (prefill + decode)
    const double t = prefill_seconds + decode_seconds;
    return t > 0 ? double(generated_tokens) / t : 0.0;
  }
};

// Text of one more token of a sequence ("" is fine, e.g. for an incomplete UTF-8 character).
using TokenText = std::function<std::string(int32_t id)>;
// Streaming callback: newly final text of sequence `seq`.
using OnText = std::function<void(size_t seq, const std::string& piece)>;

// `texts`: empty, or one TokenText per prompt (required when stop_strings is non-empty). Every prompt needs at
// least one token.
std::vector<GenerateResult> generate_batch(model::Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opts, const std::vector<TokenText>& texts = {},
                                           const OnText& on_text = {}, GenerateStats* stats = nullptr);

inline GenerateResult generate(model::Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                               const TokenText& text = {}, const OnText& on_text = {},
                               GenerateStats* stats = nullptr) {
  std::vector<TokenText> texts;
  if (text) texts.push_back(text);
  return generate_batch(model, {prompt}, opts, texts, on_text, stats).at(0);
}

}  // namespace qs::runtime
