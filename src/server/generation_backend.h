// What the HTTP server needs from the serving engine, as an interface: the runtime Engine (runtime/engine.h) in
// production (EngineBackend, engine_backend.cc), a scripted fake in the server's unit tests (so every HTTP
// behaviour is tested without a model). The semantics are runtime::Engine's: submit() throws
// runtime::QueueFull / runtime::InvalidRequest; callbacks run on the engine thread, see every new piece of text
// in order and then exactly one final event (finish != kNone); abort() is idempotent and safe from anywhere.
#pragma once

#include <cstdint>
#include <memory>

#include "runtime/engine.h"

namespace qs::server {

class GenerationBackend {
 public:
  virtual ~GenerationBackend() = default;
  virtual uint64_t submit(runtime::RequestParams params, runtime::OutputCallback on_output) = 0;
  virtual void abort(uint64_t id) = 0;
  virtual runtime::EngineMetrics metrics() const = 0;
  virtual int64_t max_context() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::vector<int32_t> eos_token_ids() const = 0;  // the model config's, besides the tokenizer's
};

// Adapts a runtime::Engine (which must outlive the adapter).
std::unique_ptr<GenerationBackend> make_engine_backend(runtime::Engine& engine);

}  // namespace qs::server
