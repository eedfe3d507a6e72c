// EngineCore driven step by step over the FakeExecutor (fake_executor.h: a shadow KV pool that checks every
// cached position of every sequence at every step): outputs equal the cache-free expected tokens; no page leaks
// after requests finish or are aborted; memory pressure (a pool of a few pages) completes every request with
// preemptions counted; FCFS; prefix-cache hits skip prefill tokens and give the same tokens as misses; chunked
// prefill with tiny budgets; seeded sampling independent of batching; host sampling, logprobs, stop token ids,
// max_tokens and context limits; failures (non-finite logits, an executor error, a request too big for the
// pool) finish only the requests concerned; and a seeded randomized run of 1,000 add / step / abort operations
// checking the invariants after every step.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "runtime/engine_core.h"
#include "runtime/fake_executor.h"

namespace qs::runtime {
namespace {

using testing::FakeExecutor;

// Collects each request's events.
struct Sink {
  struct Result {
    std::vector<int32_t> tokens;
    std::vector<TokenLogprob> logprobs;
    std::vector<std::vector<TokenLogprob>> top;
    FinishReason finish = FinishReason::kNone;
    std::string error;
    int32_t cached = 0, events = 0, finals = 0;
  };
  std::map<uint64_t, Result> r;
  std::vector<uint64_t> finish_order;
  OutputCallback cb() {
    return [this](const RequestOutput& o) {
      Result& x = r[o.id];
      EXPECT_EQ(x.finals, 0) << "event after the final event of " << o.id;
      x.tokens.insert(x.tokens.end(), o.tokens.begin(), o.tokens.end());
      x.logprobs.insert(x.logprobs.end(), o.token_logprobs.begin(), o.token_logprobs.end());
      x.top.insert(x.top.end(), o.top_logprobs.begin(), o.top_logprobs.end());
      ++x.events;
      if (o.finish != FinishReason::kNone) {
        ++x.finals;
        x.finish = o.finish;
        x.error = o.error;
        x.cached = o.cached_prompt_tokens;
        finish_order.push_back(o.id);
      }
    };
  }
};

std::vector<int32_t> prompt_of(uint64_t seed, int32_t n, int32_t vocab = 97) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = int32_t(rng() % uint64_t(vocab));
  return p;
}

RequestParams params(std::vector<int32_t> prompt, int32_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.detokenize = false;
  return p;
}

void drain(EngineCore& core, int max_steps = 100000) {
  for (int i = 0; i < max_steps && core.has_work(); ++i) {
    core.step();
    core.check_invariants();
  }
  ASSERT_FALSE(core.has_work()) << "requests still pending after " << max_steps << " steps";
}

void expect_no_pages_held(const EngineCore& core) {
  EXPECT_EQ(core.blocks().num_used(), 0);
  EXPECT_EQ(core.blocks().num_free() + core.blocks().num_evictable(), core.blocks().num_pages());
  EXPECT_EQ(core.num_requests(), 0);
}

TEST(EngineCore, GreedyOutputsEqualExpectedAcrossAwkwardLengths) {
  FakeExecutor ex(4, 256);
  EngineOptions o;
  o.max_num_batched_tokens = 37;
  EngineCore core(ex, nullptr, o);
  Sink sink;
  std::vector<std::vector<int32_t>> prompts;
  const std::vector<int32_t> lens = {1, 3, 4, 5, 17, 63, 64, 65};
  for (size_t i = 0; i < lens.size(); ++i) {
    prompts.push_back(prompt_of(i, lens[i]));
    core.add(i + 1, params(prompts.back(), 9), sink.cb());
  }
  drain(core);
  for (size_t i = 0; i < lens.size(); ++i) {
    EXPECT_EQ(sink.r[i + 1].tokens, ex.expected_greedy(prompts[i], 9)) << "prompt length " << lens[i];
    EXPECT_EQ(sink.r[i + 1].finish, FinishReason::kLength);
    EXPECT_EQ(sink.r[i + 1].finals, 1);
  }
  expect_no_pages_held(core);
  const EngineMetrics m = core.metrics();
  EXPECT_EQ(m.generated_tokens, 9 * int64_t(lens.size()));
  EXPECT_EQ(m.requests_finished[int(FinishReason::kLength)], int64_t(lens.size()));
  EXPECT_EQ(m.ttft.count, int64_t(lens.size()));
  EXPECT_EQ(m.itl.count, 8 * int64_t(lens.size()));
  EXPECT_EQ(m.e2e.count, int64_t(lens.size()));
  EXPECT_EQ(m.ttft.counts.back(), m.ttft.count);
}

TEST(EngineCore, ChunkedPrefillWithTinyBudgets) {
  for (int32_t budget : {1, 2, 3, 7}) {
    FakeExecutor ex(4, 128);
    EngineOptions o;
    o.max_num_batched_tokens = budget;
    EngineCore core(ex, nullptr, o);
    Sink sink;
    std::vector<std::vector<int32_t>> prompts;
    for (uint64_t i = 0; i < 4; ++i) {
      prompts.push_back(prompt_of(100 + i, int32_t(5 + 6 * i)));
      core.add(i + 1, params(prompts.back(), 5), sink.cb());
    }
    drain(core);
    EXPECT_LE(ex.max_step_tokens, budget);
    for (uint64_t i = 0; i < 4; ++i)
      EXPECT_EQ(sink.r[i + 1].tokens, ex.expected_greedy(prompts[i], 5)) << "budget " << budget;
    expect_no_pages_held(core);
  }
}

TEST(EngineCore, LongPromptNeverStallsDecodes) {
  FakeExecutor ex(8, 256);
  EngineOptions o;
  o.max_num_batched_tokens = 16;
  EngineCore core(ex, nullptr, o);
  Sink sink;
  core.add(1, params(prompt_of(1, 5), 40), sink.cb());
  core.step();  // 1 is decoding now
  core.add(2, params(prompt_of(2, 300), 2), sink.cb());
  // While 2's 300-token prompt prefills in chunks, 1 gets a token every step.
  for (int s = 0; s < 15; ++s) {
    const size_t before = sink.r[1].tokens.size();
    core.step();
    core.check_invariants();
    EXPECT_EQ(sink.r[1].tokens.size(), before + 1) << "step " << s;
  }
  drain(core);
  EXPECT_EQ(sink.r[2].tokens, ex.expected_greedy(prompt_of(2, 300), 2));
}

TEST(EngineCore, MemoryPressureCompletesEveryRequestWithPreemptions) {
  FakeExecutor ex(4, 12);  // 48 token slots for 10 requests of up to 30 tokens
  EngineOptions o;
  o.max_num_batched_tokens = 24;
  EngineCore core(ex, nullptr, o);
  Sink sink;
  std::vector<std::vector<int32_t>> prompts;
  for (uint64_t i = 0; i < 10; ++i) {
    prompts.push_back(prompt_of(200 + i, int32_t(3 + i * 2)));
    core.add(i + 1, params(prompts.back(), 9), sink.cb());
  }
  drain(core);
  for (uint64_t i = 0; i < 10; ++i) {
    EXPECT_EQ(sink.r[i + 1].finish, FinishReason::kLength);
    EXPECT_EQ(sink.r[i + 1].tokens, ex.expected_greedy(prompts[i], 9)) << "request " << i + 1;
  }
  EXPECT_GT(core.metrics().preemptions, 0);
  expect_no_pages_held(core);
}

TEST(EngineCore, FcfsFinishOrderForEqualRequests) {
  FakeExecutor ex(4, 10);  // room for about 2 at a time
  EngineOptions o;
  o.enable_prefix_caching = false;
  EngineCore core(ex, nullptr, o);
  Sink sink;
  for (uint64_t i = 0; i < 8; ++i) core.add(i + 1, params(prompt_of(300 + i, 9), 6), sink.cb());
  drain(core);
  EXPECT_EQ(sink.finish_order, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(EngineCore, PrefixHitsSkipPrefillAndGiveTheSameTokens) {
  const std::vector<int32_t> shared = prompt_of(9, 40);
  auto with_suffix = [&](uint64_t seed, int32_t n) {
    auto p = shared;
    auto s = prompt_of(seed, n);
    p.insert(p.end(), s.begin(), s.end());
    return p;
  };
  std::vector<std::vector<int32_t>> prompts = {with_suffix(1, 5), with_suffix(2, 9), with_suffix(3, 1), shared};
  std::map<bool, std::map<uint64_t, std::vector<int32_t>>> out;
  std::map<bool, int64_t> processed;
  for (bool caching : {false, true}) {
    FakeExecutor ex(8, 64);
    EngineOptions o;
    o.enable_prefix_caching = caching;
    EngineCore core(ex, nullptr, o);
    Sink sink;
    core.add(1, params(prompts[0], 6), sink.cb());
    drain(core);  // the first request fills the cache
    for (uint64_t i = 1; i < prompts.size(); ++i) core.add(i + 1, params(prompts[i], 6), sink.cb());
    drain(core);
    for (uint64_t i = 0; i < prompts.size(); ++i) {
      out[caching][i + 1] = sink.r[i + 1].tokens;
      EXPECT_EQ(sink.r[i + 1].tokens, ex.expected_greedy(prompts[i], 6));
    }
    processed[caching] = ex.tokens_processed;
    const EngineMetrics m = core.metrics();
    if (caching) {
      // 40 shared tokens = 5 full pages; the 40-token prompt itself can reuse only 4 (its last token recomputes).
      EXPECT_EQ(sink.r[1].cached, 0);
      EXPECT_EQ(sink.r[2].cached, 40);
      EXPECT_EQ(sink.r[3].cached, 40);
      EXPECT_EQ(sink.r[4].cached, 32);
      EXPECT_EQ(m.prefix_hit_tokens, 40 + 40 + 32);
      EXPECT_GT(m.pages_cached, 0);
    } else {
      EXPECT_EQ(m.prefix_hit_tokens, 0);
      EXPECT_EQ(sink.r[2].cached, 0);
    }
    int64_t prompt_total = 0;
    for (auto& p : prompts) prompt_total += int64_t(p.size());
    EXPECT_EQ(m.prefix_query_tokens, prompt_total);
    expect_no_pages_held(core);
  }
  EXPECT_EQ(out[true], out[false]);
  EXPECT_EQ(processed[false] - processed[true], 40 + 40 + 32);  // exactly the hit tokens were skipped
}

TEST(EngineCore, SeededSamplingIndependentOfBatching) {
  auto sampled = [](bool batched, int32_t budget) {
    FakeExecutor ex(4, 128);
    EngineOptions o;
    o.max_num_batched_tokens = budget;
    EngineCore core(ex, nullptr, o);
    Sink sink;
    RequestParams p = params(prompt_of(77, 11), 12);
    p.sampling.temperature = 2.0f;  // flat enough that the +5 peak often loses
    p.sampling.seed = 1234;
    if (batched)
      for (uint64_t i = 0; i < 5; ++i) core.add(10 + i, params(prompt_of(i, 13), 12), sink.cb());
    core.add(1, p, sink.cb());
    drain(core);
    return sink.r[1].tokens;
  };
  const auto alone = sampled(false, 1000);
  EXPECT_EQ(sampled(true, 1000), alone);
  EXPECT_EQ(sampled(true, 5), alone);
  FakeExecutor ex(4, 16);
  EXPECT_NE(alone, ex.expected_greedy(prompt_of(77, 11), 12));  // sampling did something
}

TEST(EngineCore, HostSamplingLogprobsStopTokensAndLimits) {
  FakeExecutor ex(4, 128, 97, /*max_context=*/24);
  EngineCore core(ex, nullptr, {});
  Sink sink;
  const auto p = prompt_of(5, 7);
  const auto greedy = ex.expected_greedy(p, 16);
  // Logprobs (executor-sampled token, logits returned).
  RequestParams a = params(p, 4);
  a.logprobs = 3;
  core.add(1, a, sink.cb());
  // Repetition penalty 1.0001 (host sampling; the +5 peak still wins): the same tokens.
  RequestParams b = params(p, 4);
  b.sampling.repetition_penalty = 1.0001f;
  core.add(2, b, sink.cb());
  // A stop token id: stops there, included in the tokens.
  RequestParams c = params(p, 10);
  c.stop_token_ids = {greedy[2]};
  core.add(3, c, sink.cb());
  // The context limit (24) caps max_tokens: 7 + 17 = 24.
  core.add(4, params(p, 100), sink.cb());
  drain(core);
  const std::vector<int32_t> first4(greedy.begin(), greedy.begin() + 4);
  EXPECT_EQ(sink.r[1].tokens, first4);
  ASSERT_EQ(sink.r[1].logprobs.size(), 4u);
  ASSERT_EQ(sink.r[1].top.size(), 4u);
  std::vector<float> row(97);
  std::vector<int32_t> ctx = p;
  for (size_t i = 0; i < 4; ++i) {
    ex.logits_row(FakeExecutor::chain_of(ctx), row.data());
    TokenLogprob want;
    std::vector<TokenLogprob> top;
    compute_logprobs(row.data(), 97, greedy[i], 3, &want, &top);
    EXPECT_EQ(sink.r[1].logprobs[i].id, greedy[i]);
    EXPECT_FLOAT_EQ(sink.r[1].logprobs[i].logprob, want.logprob);
    EXPECT_LT(want.logprob, 0.0f);
    ASSERT_EQ(sink.r[1].top[i].size(), 3u);
    EXPECT_EQ(sink.r[1].top[i][0].id, greedy[i]);  // the peak is the top-1
    EXPECT_GE(sink.r[1].top[i][0].logprob, sink.r[1].top[i][1].logprob);
    ctx.push_back(greedy[i]);
  }
  EXPECT_EQ(sink.r[2].tokens, first4);
  const size_t stop_at = size_t(std::find(greedy.begin(), greedy.end(), greedy[2]) - greedy.begin());
  EXPECT_EQ(sink.r[3].tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + std::ptrdiff_t(stop_at) + 1));
  EXPECT_EQ(sink.r[3].finish, FinishReason::kStop);
  EXPECT_EQ(sink.r[4].tokens.size(), 17u);
  EXPECT_EQ(sink.r[4].finish, FinishReason::kLength);
  expect_no_pages_held(core);
}

TEST(EngineCore, FailuresFinishOnlyTheRequestsConcerned) {
  FakeExecutor ex(4, 8);  // 32 slots
  EngineCore core(ex, nullptr, {});
  Sink sink;
  // Too big for the pool: an error, not a hang.
  core.add(1, params(prompt_of(1, 40), 4), sink.cb());
  // Non-finite logits: the poison token ends the context of request 2's first step.
  auto p2 = prompt_of(2, 5);
  ex.poison_chain = FakeExecutor::chain_of(p2);
  ex.poison = true;
  RequestParams r2 = params(p2, 4);
  r2.logprobs = 0;
  core.add(2, r2, sink.cb());
  core.add(3, params(prompt_of(3, 6), 3), sink.cb());
  drain(core);
  EXPECT_EQ(sink.r[1].finish, FinishReason::kError);
  EXPECT_NE(sink.r[1].error.find("cannot hold"), std::string::npos) << sink.r[1].error;
  EXPECT_EQ(sink.r[2].finish, FinishReason::kError);
  EXPECT_EQ(sink.r[2].error, "non-finite logits");
  EXPECT_EQ(sink.r[3].finish, FinishReason::kLength);
  EXPECT_EQ(sink.r[3].tokens, ex.expected_greedy(prompt_of(3, 6), 3));
  ex.poison = false;
  // An executor failure fails the batch's requests; the engine goes on afterwards.
  core.add(4, params(prompt_of(4, 5), 3), sink.cb());
  ex.fail_next = true;
  drain(core);
  EXPECT_EQ(sink.r[4].finish, FinishReason::kError);
  EXPECT_NE(sink.r[4].error.find("injected failure"), std::string::npos);
  core.add(5, params(prompt_of(5, 5), 3), sink.cb());
  drain(core);
  EXPECT_EQ(sink.r[5].tokens, ex.expected_greedy(prompt_of(5, 5), 3));
  expect_no_pages_held(core);
  EXPECT_EQ(core.metrics().requests_finished[int(FinishReason::kError)], 3);
}

TEST(EngineCore, RejectedBatchIsRerunSequenceBySequence) {
  FakeExecutor ex(4, 64);
  ex.throw_on_nonfinite = true;
  EngineCore core(ex, nullptr, {});
  Sink sink;
  const auto bad = prompt_of(21, 9);
  ex.poison_chain = FakeExecutor::chain_of(bad);
  ex.poison = true;
  core.add(1, params(prompt_of(20, 7), 5), sink.cb());
  core.add(2, params(bad, 5), sink.cb());
  core.add(3, params(prompt_of(22, 11), 5), sink.cb());
  drain(core);
  EXPECT_EQ(sink.r[2].finish, FinishReason::kError);
  EXPECT_NE(sink.r[2].error.find("non-finite"), std::string::npos) << sink.r[2].error;
  EXPECT_EQ(sink.r[1].tokens, ex.expected_greedy(prompt_of(20, 7), 5));
  EXPECT_EQ(sink.r[3].tokens, ex.expected_greedy(prompt_of(22, 11), 5));
  expect_no_pages_held(core);
}

TEST(EngineCore, AbortFreesPagesAndSendsOneFinalEvent) {
  FakeExecutor ex(4, 64);
  EngineCore core(ex, nullptr, {});
  Sink sink;
  core.add(1, params(prompt_of(1, 20), 50), sink.cb());
  core.add(2, params(prompt_of(2, 20), 50), sink.cb());
  core.step();
  core.step();
  EXPECT_GT(core.blocks().num_used(), 0);
  EXPECT_TRUE(core.abort(1));
  EXPECT_FALSE(core.abort(1));   // idempotent
  EXPECT_FALSE(core.abort(99));  // unknown
  EXPECT_EQ(sink.r[1].finish, FinishReason::kAbort);
  EXPECT_EQ(sink.r[1].finals, 1);
  core.check_invariants();
  core.add(3, params(prompt_of(3, 20), 50), sink.cb());
  core.step();
  core.abort_all();
  EXPECT_EQ(sink.r[2].finish, FinishReason::kAbort);
  EXPECT_EQ(sink.r[3].finish, FinishReason::kAbort);
  expect_no_pages_held(core);
  core.add(4, params(prompt_of(4, 20), 50), sink.cb());
  core.step();
  core.fail_all("broken");
  EXPECT_EQ(sink.r[4].finish, FinishReason::kError);
  EXPECT_EQ(sink.r[4].error, "broken");
  EXPECT_EQ(sink.r[4].finals, 1);
  expect_no_pages_held(core);
}

TEST(EngineCore, InvalidRequestsAreRefusedWithAReason) {
  FakeExecutor ex(4, 64, 97, 32);
  EngineCore core(ex, nullptr, {});
  auto why = [&](RequestParams p) {
    try {
      core.validate(p);
    } catch (const InvalidRequest& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(why(params({}, 4)).find("empty"), std::string::npos);
  EXPECT_NE(why(params(prompt_of(1, 32), 4)).find("context of 32"), std::string::npos);
  EXPECT_NE(why(params({1, 97}, 4)).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(why(params({1}, 0)).find("max_tokens"), std::string::npos);
  RequestParams p = params({1}, 4);
  p.sampling.top_p = 0;
  EXPECT_NE(why(p).find("top_p"), std::string::npos);
  p = params({1}, 4);
  p.logprobs = 21;
  EXPECT_NE(why(p).find("logprobs"), std::string::npos);
  p = params({1}, 4);
  p.detokenize = true;
  EXPECT_NE(why(p).find("no tokenizer"), std::string::npos);
  EXPECT_EQ(why(params(prompt_of(1, 31), 4)), "(accepted)");
}

// 1,000 random operations: add (random lengths, shared prefixes, random sampling), step, abort; tiny pool and
// budget so that chunking, preemption and eviction all happen; invariants after every operation; every request
// gets exactly one final event with the expected tokens (greedy ones) and nothing is leaked.
TEST(EngineCore, RandomizedAddStepAbort) {
  std::mt19937_64 rng(20261130);
  FakeExecutor ex(4, 24, 97, 64);
  EngineOptions o;
  o.max_num_batched_tokens = 11;
  o.max_num_seqs = 5;
  EngineCore core(ex, nullptr, o);
  Sink sink;
  std::map<uint64_t, std::pair<std::vector<int32_t>, int32_t>> greedy;  // id -> prompt, max_tokens
  std::vector<uint64_t> ids;
  const auto base = prompt_of(4242, 30);
  uint64_t next = 1;
  int adds = 0, aborts = 0, steps = 0;
  for (int op = 0; op < 1000; ++op) {
    const int k = int(rng() % 10);
    if (k < 3) {
      const int32_t shared = int32_t(rng() % 20), own = int32_t(1 + rng() % 25);
      std::vector<int32_t> p(base.begin(), base.begin() + shared);
      const auto tail = prompt_of(rng(), own);
      p.insert(p.end(), tail.begin(), tail.end());
      RequestParams r = params(p, int32_t(1 + rng() % 12));
      if (rng() % 4 == 0) {
        r.sampling.temperature = 0.5f;
        r.sampling.seed = rng();
      } else {
        greedy[next] = {p, r.max_tokens};
      }
      if (rng() % 8 == 0) r.logprobs = 2;
      core.add(next, r, sink.cb());
      ids.push_back(next++);
      ++adds;
    } else if (k < 4 && !ids.empty()) {
      core.abort(ids[rng() % ids.size()]);
      ++aborts;
    } else {
      core.step();
      ++steps;
    }
    ASSERT_NO_THROW(core.check_invariants()) << "op " << op;
  }
  drain(core);
  for (uint64_t id : ids) {
    const auto& r = sink.r[id];
    EXPECT_EQ(r.finals, 1) << "request " << id;
    if (r.finish == FinishReason::kLength && greedy.count(id)) {
      EXPECT_EQ(r.tokens, ex.expected_greedy(greedy[id].first, greedy[id].second)) << "request " << id;
    }
    EXPECT_NE(r.finish, FinishReason::kError) << r.error;
  }
  expect_no_pages_held(core);
  EXPECT_GT(adds, 200);
  EXPECT_GT(aborts, 50);
  EXPECT_GT(core.metrics().preemptions, 0);
  EXPECT_GT(core.metrics().prefix_hit_tokens, 0);
  EXPECT_GT(core.blocks().evictions(), 0);
}

}  // namespace
}  // namespace qs::runtime
