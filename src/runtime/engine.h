// The serving engine: the request lifecycle on top of an Executor (model/executor.h). One thread owns the executor
// and runs steps (scheduler: continuous batching with chunked prefill, preemption; runtime/kv: paged blocks with
// prefix caching); a thread-safe queue in front of it takes requests from any thread (the HTTP server, the CLI,
// `qserve bench --online`). This header is the contract the server is written against.
//
// Lifecycle of a request: submit() validates and queues it (returns its id) -> waiting -> running (prefill chunks,
// then one token per step) -> finished with a FinishReason (stop: EOS / stop token / stop string; length:
// max_tokens or the context limit; abort: abort() or shutdown; error: the executor failed). The callback sees
// every newly final piece of text in order, then exactly one event with finish != kNone, after which the request
// holds no KV pages.
// Callbacks run on the engine thread: they must be quick and never call back into the engine synchronously except
// abort() (which is safe from a callback).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/executor.h"
#include "model/sampling.h"
#include "tokenizer/tokenizer.h"

namespace qs::runtime {

struct RequestParams {
  std::vector<int32_t> prompt;  // token ids, BOS included if the model wants one (>= 1 token)
  model::SamplingParams sampling;
  int32_t max_tokens = 16;                 // >= 1; capped by the context (finish kLength)
  std::vector<std::string> stop;           // stop strings (cut from the text, never emitted)
  std::vector<int32_t> stop_token_ids;     // besides the tokenizer's EOS ids
  bool ignore_eos = false;                 // benchmarks: generate exactly max_tokens
  int32_t logprobs = -1;                   // -1: none; k >= 0: the sampled token's logprob and the top k (k <= 20)
  bool detokenize = true;                  // false: ids only (benchmarks)
  // Added by the runtime: true (completions): the output continues the prompt's text, so a SentencePiece leading
  // space is kept (" brown"); false (chat replies): the output starts a new text and that space is dropped.
  bool continues_text = true;
};

enum class FinishReason { kNone, kStop, kLength, kAbort, kError };
const char* finish_reason_name(FinishReason r);  // "", "stop", "length", "abort", "error"

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

// One event of a request's stream.
struct RequestOutput {
  uint64_t id = 0;
  std::vector<int32_t> tokens;                 // new token ids since the previous event
  std::string text;                            // newly final text (held back while it may start a stop string)
  std::vector<TokenLogprob> token_logprobs;    // logprobs >= 0: one per new token
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // logprobs > 0: the top k per new token
  FinishReason finish = FinishReason::kNone;
  std::string error;                           // kError: what failed
  int32_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;  // totals so far
};
using OutputCallback = std::function<void(const RequestOutput&)>;

struct EngineOptions {
  int32_t max_num_seqs = 256;             // sequences running at once
  int32_t max_num_batched_tokens = 8192;  // tokens per step (decodes first, then prefill chunks)
  int32_t max_queue = 4096;               // waiting requests before submit() refuses (QueueFull)
  bool enable_prefix_caching = true;
  bool static_batch = false;              // the paper's benchmark: admit a whole batch, run it to the end
};

struct EngineMetrics {
  int64_t waiting = 0, running = 0;
  // used: held by requests; cached: unreferenced prefix-cache pages (reusable, evicted on demand); free: the rest.
  // used + cached + free == total.
  int64_t pages_total = 0, pages_used = 0, pages_cached = 0, pages_free = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;  // hit rate = hit / query
  int64_t requests_finished[5] = {0, 0, 0, 0, 0};          // by FinishReason
  int64_t prompt_tokens = 0, generated_tokens = 0, preemptions = 0, steps = 0;
  // Histograms (Prometheus style): cumulative counts per upper bound in seconds, plus sum and count.
  struct Histogram {
    std::vector<double> bounds;
    std::vector<int64_t> counts;  // counts[i]: observations <= bounds[i]; the last entry is +Inf
    double sum = 0;
    int64_t count = 0;
  };
  Histogram ttft, itl, e2e;
};

// submit() refusals, so a server can answer 429/503 (QueueFull) or 400 (InvalidRequest) with the message.
class QueueFull : public Error {
 public:
  using Error::Error;
};
class InvalidRequest : public Error {
 public:
  using Error::Error;
};

class Engine {
 public:
  // `tokenizer` may be null when every request has detokenize = false and no stop strings. Starts the engine
  // thread. The executor must outlive the engine.
  Engine(model::Executor& executor, std::shared_ptr<const tokenizer::Tokenizer> tokenizer, EngineOptions opts);
  ~Engine();  // shutdown(0) then joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Thread-safe. Throws InvalidRequest (empty prompt, prompt + 1 > max_context with both numbers, bad sampling
  // parameters, max_tokens < 1, bad token ids) or QueueFull; never blocks on the executor.
  uint64_t submit(RequestParams params, OutputCallback on_output);
  // Thread-safe, idempotent; unknown or finished ids are ignored. The request's pages are freed at the next step
  // boundary and its callback gets a final kAbort event.
  void abort(uint64_t id);
  // Stops accepting (submit throws QueueFull "shutting down"), lets running requests finish for up to `grace`,
  // then aborts the rest; returns when every callback has had its final event.
  void shutdown(std::chrono::milliseconds grace);

  EngineMetrics metrics() const;  // thread-safe snapshot
  int64_t max_context() const;
  const model::Executor& executor() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs::runtime
