// The OpenAI-compatible HTTP server: POST /v1/completions and /v1/chat/completions (JSON or Server-Sent Events
// streaming ending with "data: [DONE]"), GET /v1/models (and /v1/models/{id}), GET /health, GET /metrics
// (Prometheus text), on top of a GenerationBackend (the runtime Engine in production).
//
// Every error is OpenAI's JSON error shape with the right status: 400 malformed JSON / bad fields / prompt too
// long for the context, 401 missing or wrong bearer token (when an API key is set; /v1/* only, compared in
// constant time), 404 unknown route or model, 405 wrong method (with Allow), 413 body over the limit, 415 not
// application/json, 429 engine queue full (Retry-After), 503 while draining (Retry-After), 500 engine error.
// A refused request touches nothing else in flight.
//
// Threads: httplib's pool (ServerOptions::http_threads) runs handlers; a generation handler tokenizes, submits
// one engine request per choice (RequestSession) and waits for engine events in slices of poll_ms, checking
// between slices that its client is still connected (HttpTransport): a client that goes away, streaming or
// not, gets its engine requests aborted at once (their KV pages are freed at the next engine step).
// Shutdown: begin_drain() (new generation requests get 503, /health 503), then the owner shuts the engine down
// (which finishes or aborts what is in flight), wait_idle() until the handlers have written their last bytes,
// then stop().
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "server/generation_backend.h"
#include "server/prometheus.h"
#include "tokenizer/tokenizer.h"

namespace qs::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                        // 0: any free port (see port())
  std::string served_model_name = "qserve";
  std::string api_key;                    // empty: no authentication
  size_t max_body_bytes = 8u << 20;       // larger bodies get 413
  int http_threads = 64;                  // handler threads (each streaming client holds one while it streams)
  int retry_after_seconds = 1;            // Retry-After on 429 / 503
  int poll_ms = 20;                       // how often a waiting handler checks that its client is still there
  int write_timeout_seconds = 30;
  bool log_requests = false;              // one line per request on stderr
  // true: the engine detokenizes (stop strings work; the tokenizer must cover every id the model can produce).
  // false ("ids mode", forced when there is no tokenizer; `serve --shape`, random weights): the engine streams token
  // ids only, nothing is detokenized on the engine thread, and the server writes each choice's text itself from the
  // tokenizer when there is one: ids outside its vocabulary (or every id, without a tokenizer) add no text. Every
  // choice and streamed chunk then carries "token_ids"; stop strings are refused (400), and so are text prompts
  // and chat without a tokenizer.
  bool engine_text = true;
};

class Server {
 public:
  // The backend must outlive the server; `tok` may be null (ids mode, see ServerOptions::engine_text).
  Server(ServerOptions opts, GenerationBackend& backend, std::shared_ptr<const tokenizer::Tokenizer> tok);
  ~Server();  // stop()s and joins a start()ed server
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();        // binds host:port; returns the port; throws qs::Error when it cannot
  void run();        // serves until stop() (call bind() first)
  void start();      // bind() and run() on a background thread
  int port() const;

  void begin_drain();
  bool draining() const;
  // Waits until no generation request is being served (or `timeout` passes); returns whether it is idle.
  bool wait_idle(std::chrono::milliseconds timeout);
  void stop();       // closes the listener; run() returns once the handler threads are done

  HttpCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs::server
