// The online benchmark driver over an in-process Engine on the FakeExecutor: every request completes with the
// asked number of tokens, token totals and throughputs are consistent, latency statistics are ordered, the
// concurrency cap holds, Poisson arrivals are seeded and have the right mean rate, shared-prefix prompts share
// their prefix (and hit the prefix cache), the percentile is numpy's, and the table / JSON carry the numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "runtime/char_tokenizer.h"
#include "runtime/fake_executor.h"
#include "runtime/online_bench.h"

namespace qs::runtime {
namespace {

using testing::FakeExecutor;

TEST(OnlineBench, AllAtOnceCompletesEveryRequest) {
  FakeExecutor ex(16, 512);
  Engine eng(ex, nullptr, {});
  OnlineBenchOptions o;
  o.num_prompts = 40;
  o.input_len = 50;
  o.output_len = 12;
  o.range_ratio = 0.5;
  const auto reqs = make_bench_requests(o, 97, nullptr);
  int64_t in = 0, out = 0;
  for (const auto& r : reqs) {
    in += int64_t(r.prompt.size());
    out += r.output_len;
    EXPECT_GE(r.prompt.size(), 25u);
    EXPECT_LE(r.prompt.size(), 75u);
  }
  const OnlineBenchResult r = run_online_bench(eng, o, nullptr);
  EXPECT_EQ(r.completed, 40);
  EXPECT_EQ(r.failed, 0);
  EXPECT_EQ(r.total_input_tokens, in);  // the same seeded requests
  EXPECT_EQ(r.total_output_tokens, out);
  EXPECT_GT(r.duration_s, 0);
  EXPECT_NEAR(r.output_throughput, double(out) / r.duration_s, 1e-9 * r.output_throughput);
  EXPECT_NEAR(r.total_token_throughput * r.duration_s, double(in + out), 1e-6 * double(in + out));
  EXPECT_NEAR(r.request_throughput * r.duration_s, 40.0, 1e-9);
  for (const LatencyStats* l : {&r.ttft, &r.tpot, &r.itl, &r.e2el}) {
    EXPECT_GE(l->median_ms, 0);
    EXPECT_LE(l->median_ms, l->p99_ms + 1e-12);
  }
  EXPECT_LE(r.ttft.mean_ms, r.e2el.mean_ms);
  EXPECT_GE(r.max_in_flight, 1);  // requests may finish before the last one is sent
  EXPECT_LE(r.max_in_flight, 40);
  for (const auto& rec : r.records) {
    EXPECT_TRUE(rec.ok) << rec.error;
    EXPECT_EQ(rec.itl_s.size(), size_t(rec.output_len - 1));
  }
  const auto j = online_bench_json(r, o);
  EXPECT_EQ(j["completed"], 40);
  EXPECT_EQ(j["request_rate"], "inf");
  EXPECT_TRUE(j.contains("p99_itl_ms"));
  EXPECT_EQ(j["preemptions"], r.preemptions);
  const std::string table = format_online_bench(r, o);
  EXPECT_NE(table.find("Successful requests:"), std::string::npos);
  EXPECT_NE(table.find("Median TPOT (ms):"), std::string::npos);
}

TEST(OnlineBench, ConcurrencyCapAndPoissonRate) {
  FakeExecutor ex(16, 512);
  Engine eng(ex, nullptr, {});
  OnlineBenchOptions o;
  o.num_prompts = 30;
  o.input_len = 8;
  o.output_len = 4;
  o.max_concurrency = 3;
  o.request_rate = 2000;
  const OnlineBenchResult r = run_online_bench(eng, o, nullptr);
  EXPECT_EQ(r.completed, 30);
  EXPECT_LE(r.max_in_flight, 3);
  // Arrivals: seeded, non-decreasing, mean gap 1 / rate (2,000 gaps: the sample mean is within 10% at > 3 sigma).
  const auto a = make_arrivals(2001, 50.0, 7);
  EXPECT_EQ(a, make_arrivals(2001, 50.0, 7));
  EXPECT_NE(a, make_arrivals(2001, 50.0, 8));
  EXPECT_EQ(a[0], 0.0);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_NEAR(a.back() / 2000.0, 1.0 / 50.0, 0.1 / 50.0);
  for (double t : make_arrivals(5, INFINITY, 1)) EXPECT_EQ(t, 0.0);
  EXPECT_THROW(make_arrivals(5, 0.0, 1), Error);
}

TEST(OnlineBench, SharedPrefixIsSharedAndHitsTheCache) {
  FakeExecutor ex(16, 512);
  EngineOptions eo;
  Engine eng(ex, nullptr, eo);
  OnlineBenchOptions o;
  o.num_prompts = 12;
  o.input_len = 10;
  o.output_len = 3;
  o.shared_prefix_len = 64;
  o.max_concurrency = 1;  // one after another: every request after the first hits the 64-token prefix
  const auto reqs = make_bench_requests(o, 97, nullptr);
  for (const auto& r : reqs) {
    ASSERT_EQ(r.prompt.size(), 74u);
    EXPECT_TRUE(std::equal(r.prompt.begin(), r.prompt.begin() + 64, reqs[0].prompt.begin()));
  }
  EXPECT_NE(reqs[0].prompt, reqs[1].prompt);
  const OnlineBenchResult r = run_online_bench(eng, o, nullptr);
  EXPECT_EQ(r.completed, 12);
  EXPECT_EQ(r.prefix_hit_tokens, 11 * 64);
  EXPECT_EQ(r.prefix_query_tokens, 12 * 74);
}

TEST(OnlineBench, RefusedRequestsCountAsFailed) {
  OnlineBenchOptions o;
  o.num_prompts = 5;
  o.input_len = 3;
  o.output_len = 2;
  const auto reqs = make_bench_requests(o, 97, nullptr);
  int calls = 0;
  const OnlineBenchResult r = run_online_bench(
      [&](RequestParams p, OutputCallback cb) {
        if (++calls % 2 == 0) throw QueueFull("full");
        RequestOutput out;
        out.tokens = {1};
        cb(out);
        out.finish = FinishReason::kLength;
        cb(out);
        EXPECT_EQ(p.max_tokens, 2);
      },
      reqs, o);
  EXPECT_EQ(r.completed, 3);
  EXPECT_EQ(r.failed, 2);
  EXPECT_EQ(r.records[1].error, "full");
  EXPECT_EQ(r.total_output_tokens, 6);
}

TEST(OnlineBench, PromptsFromATextFile) {
  const std::string path = ::testing::TempDir() + "online_bench_prompts.txt";
  {
    std::ofstream f(path);
    f << "abc\n\n  \nhello\n";  // blank lines are skipped
  }
  auto tok = testing::char_tokenizer();
  OnlineBenchOptions o;
  o.num_prompts = 5;
  o.output_len = 3;
  o.prompt_file = path;
  const auto reqs = make_bench_requests(o, 97, tok.get());
  ASSERT_EQ(reqs.size(), 5u);  // the two prompts, cycled
  EXPECT_EQ(reqs[0].prompt, (std::vector<int32_t>{'a' - '!', 'b' - '!', 'c' - '!'}));
  EXPECT_EQ(reqs[1].prompt.size(), 5u);
  EXPECT_EQ(reqs[2].prompt, reqs[0].prompt);
  FakeExecutor ex(4, 64);
  Engine eng(ex, tok, {});
  const OnlineBenchResult r = run_online_bench(eng, o, tok.get());
  EXPECT_EQ(r.completed, 5);
  EXPECT_EQ(r.total_input_tokens, 3 + 5 + 3 + 5 + 3);
  EXPECT_EQ(r.total_output_tokens, 15);
  o.prompt_file = path + ".missing";
  EXPECT_THROW(make_bench_requests(o, 97, tok.get()), Error);
  o.prompt_file = path;
  EXPECT_THROW(make_bench_requests(o, 97, nullptr), Error);  // a file needs the tokenizer
  std::remove(path.c_str());
}

TEST(OnlineBench, PercentileIsNumpyLinear) {
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2, 4}, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 99), 4.96);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
}

}  // namespace
}  // namespace qs::runtime
