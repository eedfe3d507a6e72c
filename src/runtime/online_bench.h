// The online serving benchmark behind `qserve bench --online`, with the conventions of `vllm bench serve` and
// `sglang.bench_serving` so that numbers compare: N requests with random token prompts (input / output lengths,
// optional +-range ratio, seeded) or prompts from a text file (one per non-empty line), optionally all starting
// with the same `shared_prefix_len` random tokens (prompt = shared prefix + input_len own tokens); arrivals are a
// Poisson process at `request_rate` req/s (inf: all at t = 0), optionally capped at `max_concurrency` requests in
// flight. Reported like vLLM: request / output / total token throughput over the benchmark's duration; TTFT
// (send -> first token), TPOT ((e2e - ttft) / (output tokens - 1), requests with >= 2 tokens), ITL (every gap
// between two streamed token events, pooled over requests) and E2E latency, each as mean / median / p99 (numpy's
// linear-interpolation percentile), in milliseconds. A printed table and a JSON object (vLLM's key names).
// The driver is written against a submit function, so the server's load test can reuse it over HTTP; the
// Engine overload drives an engine in process and adds its prefix-cache and preemption counters.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace qs::runtime {

struct OnlineBenchOptions {
  int32_t num_prompts = 1000;
  int32_t input_len = 1024;       // random prompts: own tokens per prompt (after the shared prefix)
  int32_t output_len = 128;       // generated tokens per request (ignore_eos: exactly)
  double range_ratio = 0.0;       // lengths uniform in [len * (1 - r), len * (1 + r)], r in [0, 1)
  int32_t shared_prefix_len = 0;  // random tokens common to every prompt, before its own part
  std::string prompt_file;        // instead of random tokens: one prompt per non-empty line (needs a tokenizer)
  double request_rate = std::numeric_limits<double>::infinity();  // req/s, Poisson arrivals; inf: all at once
  int32_t max_concurrency = 0;    // requests in flight at most; 0: no limit
  uint64_t seed = 0;
  bool ignore_eos = true;
  model::SamplingParams sampling;  // greedy by default
};

struct OnlineBenchRecord {
  int32_t prompt_len = 0, output_len = 0;  // output_len: tokens actually received
  double send_s = 0, first_token_s = 0, end_s = 0;  // seconds since the benchmark started
  std::vector<double> itl_s;                        // gaps between token events
  bool ok = false;
  std::string error;
};

struct LatencyStats {
  double mean_ms = 0, median_ms = 0, p99_ms = 0;
};

struct OnlineBenchResult {
  int32_t completed = 0, failed = 0;
  double duration_s = 0;
  int64_t total_input_tokens = 0, total_output_tokens = 0;
  double request_throughput = 0, output_throughput = 0, total_token_throughput = 0;
  LatencyStats ttft, tpot, itl, e2el;
  int32_t max_in_flight = 0;  // the most requests that were in flight at once
  // From the engine (Engine overload only; -1 otherwise).
  int64_t prefix_hit_tokens = -1, prefix_query_tokens = -1, preemptions = -1;
  std::vector<OnlineBenchRecord> records;  // one per request, in submission order
};

struct BenchRequest {
  std::vector<int32_t> prompt;
  int32_t output_len = 0;
};

// The requests of a benchmark, seeded. Random prompts draw ids uniformly from [0, vocab), skipping the
// tokenizer's special tokens when one is given. A prompt file needs `tok` (its lines are encoded with special
// tokens, i.e. BOS); it is cycled when it has fewer lines than num_prompts.
std::vector<BenchRequest> make_bench_requests(const OnlineBenchOptions& o, int64_t vocab,
                                              const tokenizer::Tokenizer* tok);
// Arrival offsets in seconds (non-decreasing, first one 0 when the rate is infinite), seeded.
std::vector<double> make_arrivals(int32_t n, double request_rate, uint64_t seed);
// Numpy-style percentile (linear interpolation) of unsorted values; 0 when empty.
double percentile(std::vector<double> v, double q);

// May throw to refuse a request. Callbacks follow Engine's contract: token events, then exactly one final event,
// whose completion_tokens (when larger than the tokens streamed) is taken as the request's exact output count.
using SubmitFn = std::function<void(RequestParams, OutputCallback)>;

// Runs the benchmark through `submit` (callbacks may come from any thread). Blocks until every request ended.
OnlineBenchResult run_online_bench(const SubmitFn& submit, const std::vector<BenchRequest>& reqs,
                                   const OnlineBenchOptions& o);
// In process on an Engine; requests from make_bench_requests (vocab of the engine's model).
OnlineBenchResult run_online_bench(Engine& engine, const OnlineBenchOptions& o, const tokenizer::Tokenizer* tok);

std::string format_online_bench(const OnlineBenchResult& r, const OnlineBenchOptions& o);
nlohmann::json online_bench_json(const OnlineBenchResult& r, const OnlineBenchOptions& o);

}  // namespace qs::runtime
