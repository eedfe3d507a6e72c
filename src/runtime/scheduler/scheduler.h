// Continuous (in-flight) batching: decides, step by step, which sequences run and with how many tokens, and
// builds the one model::ForwardBatch of the step. Host-only and deterministic (no clocks, no threads).
//
// Contract
//  * Concepts. A Sequence is a request's token state: tokens = prompt + generated ids, num_computed = how many of
//    them have K/V in the pool. A step gives a sequence q_len = min(tokens - num_computed, budget left) new
//    tokens; when they reach the end of tokens the step samples its next token (need_output). A sequence is
//    waiting (FCFS queue, holds no pages) or running (holds pages for at least num_computed tokens).
//  * Each step (schedule()):
//      1. token budget B = max_num_batched_tokens, sequence limit S = max_num_seqs (the engine caps both by the
//         executor's limits, and S by B so that every running decode fits one step);
//      2. running sequences in the decode phase (one token left) first, in admission order, then running
//         sequences still in prefill (a chunk each, as budget allows): a long prompt never stalls decodes;
//      3. then waiting sequences in FCFS order while budget, S and pages allow (admission takes the cached
//         prefix pages, then a first chunk). The first waiting sequence that does not fit stops admission
//         (no overtaking), so FCFS holds. Static-batch mode admits only when nothing runs, up to S at once,
//         and then runs that batch to its end (the paper's static-batch benchmark).
//      4. When a running sequence needs a page and none is left, the newest running sequence (last admitted) is
//         preempted by recompute: its pages are freed, num_computed = 0, and it goes to the FRONT of the waiting
//         queue (it keeps its generated tokens and re-prefills prompt + output later, prefix cache permitting).
//         A sequence that needs more pages than the whole pool holds, with nothing else holding pages, can never
//         run: it is returned in StepPlan::failed (the engine finishes it with an error) instead of hanging.
//  * After the executor ran the batch, complete() advances num_computed of every scheduled sequence and commits
//    its now-full pages to the prefix cache; the caller then appends sampled tokens (append_token) and removes
//    finished or aborted sequences (finish). Nothing is lost: a sequence leaves the scheduler only by finish()
//    or by StepPlan::failed.
//  * Ownership. The scheduler owns the Sequences (by id) and the page ownership through its BlockManager; the
//    caller owns the executor and everything textual (detokenization, stop strings, callbacks).
//  * Invariants (check_invariants(), plus the block manager's): every sequence is in exactly one of waiting /
//    running; running <= max_num_seqs; a running sequence holds pages_needed(num_computed) pages or more; a
//    waiting one holds none; the block manager's sequences are exactly the running ones;
//    0 <= num_computed <= tokens.size().
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "model/forward_batch.h"
#include "model/sampling.h"
#include "runtime/kv/block_manager.h"

namespace qs::runtime {

struct SchedulerConfig {
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 8192;
  bool static_batch = false;
};

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // prompt + generated
  int32_t num_prompt = 0;
  model::SamplingParams sampling;
  bool return_logits = false;  // ask the executor for this sequence's logits (host sampling / logprobs)
  int32_t num_computed = 0;    // tokens with K/V in the pool
  int32_t cached_prompt_tokens = 0;  // prompt tokens served by the prefix cache at the first admission
  int32_t preemptions = 0;
  bool admitted_once = false;
  bool running = false;
  int64_t admit_order = 0;  // sequence number of the last admission (orders the running list)

  int32_t num_generated() const { return int32_t(tokens.size()) - num_prompt; }
};

// One step's work: the batch, and for each of its sequences the scheduled Sequence.
struct StepPlan {
  model::ForwardBatch batch;
  std::vector<Sequence*> seqs;       // [batch.num_seqs()]
  std::vector<uint64_t> failed;      // ids that can never fit the pool: already removed, finish them with an error
  std::vector<uint64_t> preempted;   // ids preempted while planning this step (informational)
  int32_t prefill_tokens = 0, decode_tokens = 0, cached_tokens = 0;  // tokens by kind; prefix hits admitted now
  bool empty() const { return seqs.empty(); }
};

struct SchedulerStats {
  int64_t preemptions = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;  // per admission (a re-admission counts again)
  int64_t steps = 0;
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, SchedulerConfig cfg);

  // Queues a new sequence at the back of the waiting queue. Throws qs::Error on a duplicate id or no tokens.
  Sequence& add(std::unique_ptr<Sequence> seq);
  // Plans the next step (an empty plan when nothing can run). Pointers stay valid until finish() / the next plan.
  StepPlan schedule();
  // The plan's batch ran: advance num_computed and commit full pages of every scheduled sequence.
  void complete(const StepPlan& plan);
  // Appends a sampled token to a running sequence.
  void append_token(Sequence& seq, int32_t token);
  // Removes a sequence (finished or aborted) and frees its pages; unknown ids are ignored. Returns whether it
  // existed.
  bool finish(uint64_t id);

  Sequence* find(uint64_t id);
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  std::vector<uint64_t> waiting_ids() const;
  std::vector<uint64_t> running_ids() const;
  const SchedulerStats& stats() const { return stats_; }
  const SchedulerConfig& config() const { return cfg_; }
  BlockManager& blocks() { return blocks_; }
  const BlockManager& blocks() const { return blocks_; }

  void check_invariants() const;

 private:
  void preempt(Sequence* s);
  // Makes `s` (running or being admitted) hold pages for `num_tokens` tokens, preempting the newest running
  // sequences other than `s` if needed (only when `may_preempt`). Returns false when it cannot.
  bool reserve(Sequence* s, int32_t num_tokens, bool may_preempt, StepPlan& plan);

  BlockManager& blocks_;
  SchedulerConfig cfg_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order
  int64_t admit_counter_ = 0;
  SchedulerStats stats_;
};

}  // namespace qs::runtime
