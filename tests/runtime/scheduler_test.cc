// Scheduler on its own (no executor): decodes are scheduled before prefill chunks, a long prompt is chunked by
// the token budget and never stalls running decodes, FCFS admission without overtaking, preemption of the newest
// running sequence (to the front of the waiting queue), a request that can never fit is failed, static-batch
// mode admits one batch at a time, and the batch layout matches the sequences' state.
#include <gtest/gtest.h>

#include "runtime/scheduler/scheduler.h"

namespace qs::runtime {
namespace {

std::unique_ptr<Sequence> make_seq(uint64_t id, int32_t prompt_len) {
  auto s = std::make_unique<Sequence>();
  s->id = id;
  for (int32_t i = 0; i < prompt_len; ++i) s->tokens.push_back(int32_t((id * 31 + uint64_t(i)) % 50));
  s->num_prompt = prompt_len;
  return s;
}

// Completes a plan, appending token 1 to every sequence that sampled.
void run(Scheduler& sch, const StepPlan& plan) {
  sch.complete(plan);
  for (size_t i = 0; i < plan.seqs.size(); ++i)
    if (plan.batch.need_output[i]) sch.append_token(*plan.seqs[i], 1);
  sch.check_invariants();
}

TEST(Scheduler, DecodesFirstThenChunkedPrefill) {
  BlockManager bm(4, 64, false);
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 8;
  Scheduler sch(bm, cfg);
  sch.add(make_seq(1, 3));
  sch.add(make_seq(2, 3));
  StepPlan p = sch.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.batch.num_tokens(), 6);
  run(sch, p);
  sch.add(make_seq(3, 30));  // a long prompt: 8-token budget, 2 decodes first, then 6-token chunks
  for (int step = 0; step < 5; ++step) {
    p = sch.schedule();
    ASSERT_GE(p.seqs.size(), 2u);
    EXPECT_EQ(p.seqs[0]->id, 1u);
    EXPECT_EQ(p.seqs[1]->id, 2u);
    EXPECT_EQ(p.batch.q_len(0), 1);
    EXPECT_EQ(p.batch.q_len(1), 1);
    EXPECT_LE(p.batch.num_tokens(), 8);
    if (step < 5 && p.seqs.size() == 3) {
      EXPECT_EQ(p.batch.q_len(2), 6);
      EXPECT_EQ(p.batch.need_output[2], step == 4 ? 1 : 0);  // 30 = 5 chunks of 6
      EXPECT_EQ(p.batch.prefix_len(2), 6 * step);
    }
    run(sch, p);
  }
  EXPECT_EQ(sch.find(3)->num_computed, 30);
  EXPECT_EQ(sch.find(3)->num_generated(), 1);
}

TEST(Scheduler, FcfsAdmissionWithoutOvertaking) {
  BlockManager bm(4, 6, false);  // 24 token slots
  SchedulerConfig cfg;
  Scheduler sch(bm, cfg);
  sch.add(make_seq(1, 16));  // 4 pages
  sch.add(make_seq(2, 12));  // 3 pages: does not fit next to 1
  sch.add(make_seq(3, 4));   // 1 page would fit, but must not overtake 2
  StepPlan p = sch.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0]->id, 1u);
  EXPECT_EQ(sch.waiting_ids(), (std::vector<uint64_t>{2, 3}));
  run(sch, p);
  sch.finish(1);
  p = sch.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0]->id, 2u);
  EXPECT_EQ(p.seqs[1]->id, 3u);
  run(sch, p);
}

TEST(Scheduler, PreemptsNewestToFrontOfQueue) {
  BlockManager bm(2, 4, false);  // 8 slots
  Scheduler sch(bm, {});
  sch.add(make_seq(1, 4));  // 2 pages
  sch.add(make_seq(2, 3));  // 2 pages
  StepPlan p = sch.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  run(sch, p);  // 1: 5 tokens (4 computed), 2: 4 tokens (3 computed)
  p = sch.schedule();  // 1 decodes (position 4 -> a 3rd page): no page left, 2 is preempted
  EXPECT_EQ(p.preempted, (std::vector<uint64_t>{2}));
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0]->id, 1u);
  EXPECT_EQ(sch.waiting_ids(), (std::vector<uint64_t>{2}));
  EXPECT_EQ(sch.find(2)->num_computed, 0);
  EXPECT_EQ(sch.find(2)->tokens.size(), 4u);  // keeps its generated token
  EXPECT_EQ(sch.stats().preemptions, 1);
  run(sch, p);
  sch.finish(1);
  p = sch.schedule();  // 2 recomputes prompt + its generated token
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.batch.q_len(0), 4);
  EXPECT_EQ(p.batch.sample_step[0], 1u);
  run(sch, p);
}

TEST(Scheduler, RequestThatCanNeverFitFails) {
  BlockManager bm(4, 2, false);  // 8 slots
  Scheduler sch(bm, {});
  sch.add(make_seq(1, 9));  // the prompt alone needs 3 pages
  sch.add(make_seq(2, 3));
  StepPlan p = sch.schedule();
  EXPECT_EQ(p.failed, (std::vector<uint64_t>{1}));
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0]->id, 2u);
  EXPECT_EQ(sch.find(1), nullptr);
  run(sch, p);
  // 2 grows to 8 tokens, then its 9th position cannot fit: failed, not hung.
  for (int i = 0; i < 10 && sch.has_work(); ++i) {
    p = sch.schedule();
    if (!p.failed.empty()) {
      EXPECT_EQ(p.failed, (std::vector<uint64_t>{2}));
      EXPECT_EQ(sch.find(2), nullptr);
      break;
    }
    run(sch, p);
  }
  EXPECT_FALSE(sch.has_work());
  sch.check_invariants();
}

TEST(Scheduler, StaticBatchAdmitsOneBatchAtATime) {
  BlockManager bm(4, 64, false);
  SchedulerConfig cfg;
  cfg.static_batch = true;
  cfg.max_num_seqs = 2;
  cfg.max_num_batched_tokens = 4;
  Scheduler sch(bm, cfg);
  for (uint64_t id = 1; id <= 3; ++id) sch.add(make_seq(id, 3));
  StepPlan p = sch.schedule();  // admits 1 and 2 (budget 4: 1 gets 3 tokens, 2 gets 1)
  EXPECT_EQ(sch.running_ids(), (std::vector<uint64_t>{1, 2}));
  run(sch, p);
  for (int i = 0; i < 3; ++i) {
    p = sch.schedule();
    EXPECT_EQ(sch.running_ids(), (std::vector<uint64_t>{1, 2}));  // 3 waits although there is room
    run(sch, p);
  }
  sch.finish(1);
  p = sch.schedule();
  EXPECT_EQ(sch.running_ids(), (std::vector<uint64_t>{2}));  // still 2's batch
  run(sch, p);
  sch.finish(2);
  p = sch.schedule();
  EXPECT_EQ(sch.running_ids(), (std::vector<uint64_t>{3}));
  run(sch, p);
}

TEST(Scheduler, DuplicateIdIsAnError) {
  BlockManager bm(4, 4, false);
  Scheduler sch(bm, {});
  sch.add(make_seq(1, 3));
  EXPECT_THROW(sch.add(make_seq(1, 3)), Error);
}

}  // namespace
}  // namespace qs::runtime
