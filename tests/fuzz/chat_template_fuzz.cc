// Fuzz target: the chat template parser and renderer (untrusted code from checkpoints) on arbitrary template text,
// rendered with a small conversation. Tight limits keep each input fast; a hang past libFuzzer's -timeout, a
// stack overflow or a memory blow-up past -rss_limit_mb is a finding.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::json ctx = nlohmann::json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ there }}"},
                 {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
    "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true,
    "tools": [{"name": "calc", "parameters": {"x": 1, "y": [1.5, "z", null, true]}}]})");
  qs::tokenizer::ChatTemplateLimits lim;
  lim.max_seconds = 2.0;
  lim.max_loop_iterations = 100000;
  lim.max_output_bytes = 1 << 20;
  try {
    qs::tokenizer::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size), lim);
    (void)t.render(ctx);
  } catch (const qs::Error&) {
  }
  return 0;
}
