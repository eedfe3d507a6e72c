// The engine's synchronous core (vLLM's EngineCore): the request lifecycle on one thread, without a thread of its
// own. add() / abort() / step() are called by the thread that owns the executor: runtime::Engine (engine.h) wraps
// it with that thread and a thread-safe queue; tests drive it directly, step by step, deterministically.
//
// One step: schedule (scheduler.h) -> execute the ForwardBatch -> for every sequence that sampled: the token
// (from the executor, or sampled here on the returned logits when the request has a repetition penalty),
// logprobs (log-softmax of the returned logits), stop conditions (EOS / stop token ids, stop strings on the
// incrementally detokenized text, max_tokens, the context limit), one callback event; finished requests leave
// the scheduler and free their pages in the same step. A request whose logits are not finite finishes with
// kError; the others go on. When the executor rejects a whole batch (it throws, e.g. on non-finite logits, and
// leaves the pool untouched), the batch's sequences are rerun one by one, so only the failing ones finish with
// kError.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "runtime/engine.h"
#include "runtime/kv/block_manager.h"
#include "runtime/scheduler/scheduler.h"

namespace qs::runtime {

class EngineCore {
 public:
  using Clock = std::chrono::steady_clock;

  EngineCore(model::Executor& executor, std::shared_ptr<const tokenizer::Tokenizer> tokenizer, EngineOptions opts);
  ~EngineCore();

  // Throws InvalidRequest naming the problem. Thread-safe (reads only immutable state).
  void validate(const RequestParams& p) const;
  // Queues a validated request under a caller-chosen unique id; `arrival` starts its TTFT / e2e clocks.
  void add(uint64_t id, RequestParams params, OutputCallback on_output, Clock::time_point arrival = Clock::now());
  // Finishes a waiting or running request with kAbort (callback called now) and frees its pages. Returns false
  // for an unknown or finished id.
  bool abort(uint64_t id);
  void abort_all();
  // Finishes every request with kError and `error` (the engine thread's last resort on an internal failure).
  void fail_all(const std::string& error);
  // Runs one step; returns false when there was nothing to run (nothing waiting or running, or nothing fits).
  bool step();
  bool has_work() const { return sched_.has_work(); }
  int64_t num_requests() const { return int64_t(reqs_.size()); }

  EngineMetrics metrics() const;
  void check_invariants() const;  // scheduler + block manager invariants; each request known to the scheduler
  const Scheduler& scheduler() const { return sched_; }
  const BlockManager& blocks() const { return blocks_; }
  model::Executor& executor() const { return exec_; }
  int64_t max_context() const { return max_context_; }

 private:
  struct Request;
  void finish(Request& r, FinishReason reason, const std::string& error, RequestOutput out);
  void emit(Request& r, const RequestOutput& out);
  // Handles the sampled token of a sequence; returns true when the request finished.
  void on_token(Request& r, Sequence& seq, int32_t token, const float* logits);
  void run_plan(const StepPlan& plan);  // execute + process; a failure finishes the plan's requests
  void process(const StepPlan& plan, const model::ForwardResult& res);

  model::Executor& exec_;
  std::shared_ptr<const tokenizer::Tokenizer> tok_;
  EngineOptions opts_;
  int64_t vocab_ = 0, max_context_ = 0;
  std::vector<int32_t> eos_ids_;
  BlockManager blocks_;
  Scheduler sched_;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> reqs_;
  EngineMetrics m_;
};

// log-softmax of one row (in double); the sampled token's logprob and the top k (ties: the lower id first).
void compute_logprobs(const float* logits, int64_t vocab, int32_t token, int32_t k, TokenLogprob* sampled,
                      std::vector<TokenLogprob>* top);

}  // namespace qs::runtime
