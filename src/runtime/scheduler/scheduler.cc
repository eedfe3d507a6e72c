// Continuous batching scheduler (see scheduler.h for the contract).
#include "runtime/scheduler/scheduler.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"

namespace qs::runtime {

Scheduler::Scheduler(BlockManager& blocks, SchedulerConfig cfg) : blocks_(blocks), cfg_(cfg) {
  QS_CHECK(cfg_.max_num_seqs >= 1) << "scheduler: max_num_seqs must be >= 1, got " << cfg_.max_num_seqs;
  QS_CHECK(cfg_.max_num_batched_tokens >= 1)
      << "scheduler: max_num_batched_tokens must be >= 1, got " << cfg_.max_num_batched_tokens;
}

Sequence& Scheduler::add(std::unique_ptr<Sequence> seq) {
  QS_CHECK(seq && !seq->tokens.empty()) << "scheduler: a sequence needs at least one token";
  QS_CHECK(seq->num_prompt >= 1 && seq->num_prompt <= int32_t(seq->tokens.size()))
      << "scheduler: sequence " << seq->id << " has a bad prompt length " << seq->num_prompt;
  QS_CHECK(!seqs_.count(seq->id)) << "scheduler: duplicate sequence id " << seq->id;
  Sequence* s = seq.get();
  s->running = false;
  s->num_computed = 0;
  seqs_.emplace(s->id, std::move(seq));
  waiting_.push_back(s);
  return *s;
}

Sequence* Scheduler::find(uint64_t id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

std::vector<uint64_t> Scheduler::waiting_ids() const {
  std::vector<uint64_t> v;
  for (const Sequence* s : waiting_) v.push_back(s->id);
  return v;
}

std::vector<uint64_t> Scheduler::running_ids() const {
  std::vector<uint64_t> v;
  for (const Sequence* s : running_) v.push_back(s->id);
  return v;
}

namespace {

struct Item {
  Sequence* s;
  int32_t n;
};

}  // namespace

void Scheduler::preempt(Sequence* s) {
  blocks_.free(s->id);
  s->num_computed = 0;
  s->running = false;
  running_.erase(std::find(running_.begin(), running_.end(), s));
  waiting_.push_front(s);
  ++s->preemptions;
  ++stats_.preemptions;
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  std::vector<Item> items;
  int32_t budget = cfg_.max_num_batched_tokens;
  const bool was_running = !running_.empty();

  // Pages for `s` to hold `num_tokens`; preempts the newest running sequences (never older ones) when needed.
  auto reserve = [&](Sequence* s, int32_t num_tokens) -> bool {
    for (;;) {
      if (blocks_.allocate(s->id, num_tokens)) return true;
      Sequence* victim = running_.back();
      if (victim == s && running_.size() == 1) {
        // Alone and still short of pages: the pool can never hold this sequence.
        plan.failed.push_back(s->id);
        finish(s->id);
        return false;
      }
      auto it = std::find_if(items.begin(), items.end(), [&](const Item& i) { return i.s == victim; });
      if (it != items.end()) {  // un-schedule the victim from this step
        budget += it->n;
        items.erase(it);
      }
      plan.preempted.push_back(victim->id);
      preempt(victim);
      if (victim == s) return false;
    }
  };

  // 1-2: running decodes, then running prefill chunks, in admission order.
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<Sequence*> snapshot = running_;
    for (Sequence* s : snapshot) {
      if (!s->running || budget <= 0) continue;  // preempted or failed meanwhile
      const int32_t left = int32_t(s->tokens.size()) - s->num_computed;
      const bool decode = left == 1;
      if (decode != (pass == 0)) continue;
      const int32_t n = std::min(left, budget);
      if (!reserve(s, s->num_computed + n)) continue;
      items.push_back({s, n});
      budget -= n;
    }
  }

  // 3: admission, FCFS, no overtaking. Static-batch mode admits only into an empty engine, ignoring the budget
  // (the admitted batch prefills over the next steps).
  const bool admit = cfg_.static_batch ? !was_running && running_.empty() : true;
  while (admit && !waiting_.empty() && int32_t(running_.size()) < cfg_.max_num_seqs &&
         (budget > 0 || cfg_.static_batch)) {
    Sequence* s = waiting_.front();
    const int32_t len = int32_t(s->tokens.size());
    const PrefixMatch hit = blocks_.match_prefix(s->tokens.data(), len);
    const int32_t computed = hit.num_tokens();
    const int32_t n = std::min(len - computed, std::max(budget, 0));
    if (!blocks_.allocate(s->id, computed + n, &hit)) {
      if (running_.empty() && items.empty()) {  // nothing else holds pages: it can never fit
        waiting_.pop_front();
        plan.failed.push_back(s->id);
        seqs_.erase(s->id);
        continue;
      }
      break;  // wait for pages; later requests do not overtake
    }
    waiting_.pop_front();
    s->running = true;
    s->num_computed = computed;
    s->admit_order = admit_counter_++;
    running_.push_back(s);
    stats_.prefix_query_tokens += len;
    stats_.prefix_hit_tokens += computed;
    plan.cached_tokens += computed;
    if (!s->admitted_once) s->cached_prompt_tokens = std::min(computed, s->num_prompt);
    s->admitted_once = true;
    if (n > 0) {
      items.push_back({s, n});
      budget -= n;
    }
  }

  // Build the batch.
  for (const Item& it : items) {
    Sequence* s = it.s;
    const bool output = s->num_computed + it.n == int32_t(s->tokens.size());
    plan.batch.add_sequence(s->tokens.data() + s->num_computed, it.n, s->num_computed, blocks_.pages_of(s->id),
                            output, s->sampling, uint64_t(s->num_generated()));
    if (output && s->return_logits) plan.batch.return_logits = true;
    plan.seqs.push_back(s);
    (it.n == 1 && output ? plan.decode_tokens : plan.prefill_tokens) += it.n;
  }
  return plan;
}

void Scheduler::complete(const StepPlan& plan) {
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    Sequence* s = plan.seqs[i];
    s->num_computed += plan.batch.q_len(int32_t(i));
    QS_CHECK(s->num_computed <= int32_t(s->tokens.size())) << "scheduler: sequence " << s->id << " overran";
    blocks_.commit(s->id, s->tokens.data(), s->num_computed);
  }
  if (!plan.seqs.empty()) ++stats_.steps;
}

void Scheduler::append_token(Sequence& seq, int32_t token) {
  QS_CHECK(seq.running && seq.num_computed == int32_t(seq.tokens.size()))
      << "scheduler: sequence " << seq.id << " gets a token while not at the end of its computed tokens";
  seq.tokens.push_back(token);
}

bool Scheduler::finish(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  Sequence* s = it->second.get();
  if (s->running) {
    running_.erase(std::find(running_.begin(), running_.end(), s));
  } else {
    auto w = std::find(waiting_.begin(), waiting_.end(), s);
    if (w != waiting_.end()) waiting_.erase(w);
  }
  blocks_.free(id);
  seqs_.erase(it);
  return true;
}

void Scheduler::check_invariants() const {
  blocks_.check_invariants();
  std::unordered_set<const Sequence*> seen;
  for (const Sequence* s : waiting_) {
    QS_CHECK(seen.insert(s).second) << "invariant: sequence " << s->id << " is queued twice";
    QS_CHECK(!s->running) << "invariant: waiting sequence " << s->id << " is marked running";
    QS_CHECK(!blocks_.has(s->id)) << "invariant: waiting sequence " << s->id << " holds pages";
    QS_CHECK(s->num_computed == 0) << "invariant: waiting sequence " << s->id << " has computed tokens";
  }
  QS_CHECK(int32_t(running_.size()) <= cfg_.max_num_seqs)
      << "invariant: " << running_.size() << " running sequences > max_num_seqs " << cfg_.max_num_seqs;
  int64_t prev_order = -1;
  for (const Sequence* s : running_) {
    QS_CHECK(seen.insert(s).second) << "invariant: sequence " << s->id << " is both waiting and running";
    QS_CHECK(s->running) << "invariant: running sequence " << s->id << " is not marked running";
    QS_CHECK(s->admit_order > prev_order) << "invariant: the running list is out of admission order";
    prev_order = s->admit_order;
    QS_CHECK(blocks_.has(s->id)) << "invariant: running sequence " << s->id << " has no page entry";
    QS_CHECK(s->num_computed >= 0 && s->num_computed <= int32_t(s->tokens.size()))
        << "invariant: sequence " << s->id << " computed " << s->num_computed << " of " << s->tokens.size();
    QS_CHECK(int64_t(blocks_.pages_of(s->id).size()) >= blocks_.pages_needed(s->num_computed))
        << "invariant: running sequence " << s->id << " holds too few pages for its computed tokens";
  }
  QS_CHECK(seen.size() == seqs_.size()) << "invariant: " << seqs_.size() << " sequences but " << seen.size()
                                        << " are waiting or running";
  QS_CHECK(blocks_.num_sequences() == int64_t(running_.size()))
      << "invariant: the block manager tracks " << blocks_.num_sequences() << " sequences, " << running_.size()
      << " run";
}

}  // namespace qs::runtime
