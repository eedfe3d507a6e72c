// The HTTP side of `qserve bench --online --url`: a runtime::SubmitFn (runtime/online_bench.h) that sends each
// benchmark request to an OpenAI-compatible server as a streaming POST /v1/completions, so the same driver, workload
// and metrics measure a server instead of the engine in process.
// Each request: {"model", "prompt": [token ids], "max_tokens": output_len, "temperature" (the bench's sampling; 0 =
// greedy), "ignore_eos", "stream": true, "stream_options": {"include_usage": true}, "return_token_ids": true}.
// The stream becomes RequestOutput events for the driver: one per SSE chunk that carries tokens (its "token_ids",
// or one token for a chunk with text but no ids, when the server does not know return_token_ids), timed when the
// chunk is parsed; then one final event whose completion_tokens is the usage chunk's exact count and whose finish
// is the chunk's finish_reason ("length" / "stop"), or kError naming the problem (HTTP status and the server's
// error message, a connection error, a stream that ended without "data: [DONE]").
// GET /metrics before and after a run gives the server engine's prefix-cache and preemption counters (qserve's
// Prometheus names), so the HTTP table has the in-process table's engine block.
// Threads: a pool of `connections` workers, each with its own keep-alive connection (cpp-httplib's Client, TCP
// no-delay), so at most that many requests are in flight; size it to the benchmark's max concurrency. A request
// waiting for a free worker counts as sent (its TTFT includes the wait), as when a client queues.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "runtime/online_bench.h"

namespace qs::server {

struct HttpBenchClientOptions {
  std::string url;          // http://HOST:PORT (an optional path prefix, e.g. /v1, is kept)
  std::string api_key;      // sent as "Authorization: Bearer KEY" when not empty
  std::string model;        // the "model" of every request; empty: the first id of GET /v1/models
  int connections = 64;     // workers / connections (>= 1)
  // Reuse each worker's connection. Off for an unbounded benchmark (no --max-concurrency): idle kept-alive
  // connections beyond the server's handler threads would hold those threads and stall the queued requests.
  bool keep_alive = true;
  int connect_timeout_s = 10;
  int read_timeout_s = 900; // the longest wait for the next byte of a stream (queueing included)
};

class HttpBenchClient {
 public:
  // Checks that the server answers GET /v1/models (and has `model` when given): throws qs::Error naming the URL and
  // the problem otherwise. Starts the workers.
  explicit HttpBenchClient(HttpBenchClientOptions o);
  ~HttpBenchClient();  // finishes the queued requests, joins the workers
  HttpBenchClient(const HttpBenchClient&) = delete;
  HttpBenchClient& operator=(const HttpBenchClient&) = delete;

  const std::string& model() const;  // the model name the requests use

  // The server's engine counters from GET /metrics (qserve's Prometheus names), for the table's engine block;
  // nullopt when the server has no such metrics (another server).
  struct EngineCounters {
    int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0, preemptions = 0;
  };
  std::optional<EngineCounters> engine_counters() const;
  // Queues one request (never blocks); its callback runs on a worker thread.
  runtime::SubmitFn submit_fn();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs::server
