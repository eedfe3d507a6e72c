// The threaded serving engine (see engine.h): EngineCore (engine_core.h) on a thread of its own, behind a
// mutex-protected queue of submissions and aborts. The engine thread never holds the mutex while it steps or runs
// callbacks, so submit() never waits for the executor and abort() is safe from a callback.
#include "runtime/engine.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "core/logging.h"
#include "runtime/engine_core.h"

namespace qs::runtime {

struct Engine::Impl {
  struct Incoming {
    uint64_t id;
    RequestParams params;
    OutputCallback cb;
    EngineCore::Clock::time_point arrival;
  };

  Impl(model::Executor& ex, std::shared_ptr<const tokenizer::Tokenizer> tok, EngineOptions o)
      : core(ex, std::move(tok), o), opts(o) {
    snapshot = core.metrics();
  }

  void loop();

  EngineCore core;  // touched only by the engine thread (validate() is const and thread-safe)
  EngineOptions opts;
  mutable std::mutex mu;
  std::condition_variable wake;  // the engine thread waits on it for work
  std::condition_variable idle;  // shutdown waits on it for active == 0
  std::deque<Incoming> incoming;
  std::vector<uint64_t> aborts;
  bool accepting = true, abort_everything = false, stopping = false;
  uint64_t next_id = 1;
  int64_t active = 0;       // submitted, final event not yet delivered
  EngineMetrics snapshot;   // refreshed after every step
  std::thread thread;
};

void Engine::Impl::loop() {
  for (;;) {
    std::deque<Incoming> in;
    std::vector<uint64_t> ab;
    bool all = false, stop = false;
    {
      std::unique_lock<std::mutex> lk(mu);
      wake.wait(lk, [&] {
        return !incoming.empty() || !aborts.empty() || abort_everything || stopping || core.has_work();
      });
      in.swap(incoming);
      ab.swap(aborts);
      all = abort_everything;
      stop = stopping;
    }
    try {
      for (auto& r : in) {
        try {
          core.add(r.id, std::move(r.params), r.cb, r.arrival);
        } catch (const std::exception& e) {  // never leave a submitted request without its final event
          RequestOutput out;
          out.id = r.id;
          out.finish = FinishReason::kError;
          out.error = e.what();
          r.cb(out);
        }
      }
      for (uint64_t id : ab) core.abort(id);
      if (all) core.abort_all();
      if (stop && !core.has_work()) break;
      if (core.has_work() && !core.step()) {
        // Nothing could run (cannot happen with an idle pool; guards against a busy loop).
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } catch (const std::exception& e) {
      // A bug, not a request's fault: fail everything in flight rather than leave callers hanging.
      QS_LOG(ERROR) << "engine: step failed: " << e.what();
      core.fail_all(std::string("engine failure: ") + e.what());
    }
    std::lock_guard<std::mutex> lk(mu);
    snapshot = core.metrics();
  }
  std::lock_guard<std::mutex> lk(mu);
  snapshot = core.metrics();
}

Engine::Engine(model::Executor& executor, std::shared_ptr<const tokenizer::Tokenizer> tokenizer, EngineOptions opts)
    : impl_(std::make_unique<Impl>(executor, std::move(tokenizer), opts)) {
  QS_CHECK(opts.max_queue >= 1) << "engine: max_queue must be >= 1, got " << opts.max_queue;
  impl_->thread = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() { shutdown(std::chrono::milliseconds(0)); }

uint64_t Engine::submit(RequestParams params, OutputCallback on_output) {
  impl_->core.validate(params);  // throws InvalidRequest
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lk(m.mu);
  if (!m.accepting) throw QueueFull("the engine is shutting down");
  if (int64_t(m.incoming.size()) + m.snapshot.waiting >= m.opts.max_queue)
    throw QueueFull("the request queue is full (" + std::to_string(m.opts.max_queue) + " waiting)");
  const uint64_t id = m.next_id++;
  ++m.active;
  // The wrapper counts final events so that shutdown() knows when every request is done.
  OutputCallback cb = [this, user = std::move(on_output)](const RequestOutput& out) {
    if (user) user(out);
    if (out.finish != FinishReason::kNone) {
      std::lock_guard<std::mutex> g(impl_->mu);
      if (--impl_->active == 0) impl_->idle.notify_all();
    }
  };
  m.incoming.push_back({id, std::move(params), std::move(cb), EngineCore::Clock::now()});
  m.wake.notify_one();
  return id;
}

void Engine::abort(uint64_t id) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  impl_->aborts.push_back(id);
  impl_->wake.notify_one();
}

void Engine::shutdown(std::chrono::milliseconds grace) {
  Impl& m = *impl_;
  {
    std::unique_lock<std::mutex> lk(m.mu);
    m.accepting = false;
    m.idle.wait_for(lk, grace, [&] { return m.active == 0; });
    m.abort_everything = true;
    m.stopping = true;
    m.wake.notify_one();
    m.idle.wait(lk, [&] { return m.active == 0; });
  }
  if (m.thread.joinable() && m.thread.get_id() != std::this_thread::get_id()) m.thread.join();
}

EngineMetrics Engine::metrics() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  EngineMetrics m = impl_->snapshot;
  m.waiting += int64_t(impl_->incoming.size());
  return m;
}

int64_t Engine::max_context() const { return impl_->core.max_context(); }

const model::Executor& Engine::executor() const { return impl_->core.executor(); }

}  // namespace qs::runtime
