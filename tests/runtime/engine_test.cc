// The threaded Engine (what the HTTP server calls) over the FakeExecutor: 8 threads submitting at once all get
// the expected tokens and exactly one final event; abort() from another thread and from inside a callback;
// shutdown(grace) finishes or aborts everything and then refuses new work; QueueFull and InvalidRequest from
// submit(); stop strings on the detokenized text (a tiny one-character-per-token tokenizer): the text stops
// before the stop string, never emits any part of it, and the streamed pieces add up to the final text.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "runtime/engine.h"
#include "runtime/char_tokenizer.h"
#include "runtime/fake_executor.h"
#include "runtime/stop_text.h"

namespace qs::runtime {
namespace {

using testing::char_tokenizer;
using testing::FakeExecutor;
using namespace std::chrono_literals;

std::vector<int32_t> prompt_of(uint64_t seed, int32_t n) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = int32_t(rng() % 97);
  return p;
}

RequestParams params(std::vector<int32_t> prompt, int32_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.detokenize = false;
  return p;
}

// Thread-safe collection of every request's stream.
struct Collector {
  struct Result {
    std::vector<int32_t> tokens;
    std::string text;
    FinishReason finish = FinishReason::kNone;
    int finals = 0, events = 0;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, Result> r;
  int finished = 0;
  OutputCallback cb(std::function<void(const RequestOutput&)> also = {}) {
    return [this, also](const RequestOutput& o) {
      {
        std::lock_guard<std::mutex> lk(mu);
        Result& x = r[o.id];
        x.tokens.insert(x.tokens.end(), o.tokens.begin(), o.tokens.end());
        x.text += o.text;
        ++x.events;
        if (o.finish != FinishReason::kNone) {
          ++x.finals;
          x.finish = o.finish;
          ++finished;
        }
      }
      cv.notify_all();
      if (also) also(o);
    };
  }
  bool wait_finished(int n, std::chrono::seconds t = 30s) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, t, [&] { return finished >= n; });
  }
};

TEST(Engine, ConcurrentSubmitFromEightThreads) {
  FakeExecutor ex(4, 64);
  EngineOptions o;
  o.max_num_batched_tokens = 64;
  Engine eng(ex, nullptr, o);
  Collector col;
  std::mutex ids_mu;
  std::map<uint64_t, std::pair<std::vector<int32_t>, int32_t>> sent;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 12; ++i) {
        auto p = prompt_of(uint64_t(t * 100 + i), 1 + (t * 7 + i * 3) % 40);
        const int32_t n = 1 + (t + i) % 9;
        const uint64_t id = eng.submit(params(p, n), col.cb());
        std::lock_guard<std::mutex> lk(ids_mu);
        sent[id] = {p, n};
      }
    });
  for (auto& th : threads) th.join();
  ASSERT_TRUE(col.wait_finished(96));
  EXPECT_EQ(sent.size(), 96u);  // unique ids
  for (auto& [id, s] : sent) {
    std::lock_guard<std::mutex> lk(col.mu);
    EXPECT_EQ(col.r[id].tokens, ex.expected_greedy(s.first, s.second)) << "request " << id;
    EXPECT_EQ(col.r[id].finals, 1);
    EXPECT_EQ(col.r[id].finish, FinishReason::kLength);
  }
  eng.shutdown(1s);
  const EngineMetrics m = eng.metrics();
  EXPECT_EQ(m.requests_finished[int(FinishReason::kLength)], 96);
  EXPECT_EQ(m.pages_used, 0);
  EXPECT_EQ(m.pages_used + m.pages_cached + m.pages_free, m.pages_total);
  EXPECT_EQ(m.running + m.waiting, 0);
  EXPECT_EQ(m.ttft.count, 96);
}

TEST(Engine, AbortFromAnotherThreadAndFromACallback) {
  FakeExecutor ex(4, 256);
  ex.before_execute = [] { std::this_thread::sleep_for(500us); };  // 4000 tokens would take seconds
  Engine eng(ex, nullptr, {});
  Collector col;
  // Aborted by this thread once it has streamed 3 tokens.
  std::atomic<int> seen{0};
  const uint64_t a = eng.submit(params(prompt_of(1, 10), 4000), col.cb([&](const RequestOutput&) { ++seen; }));
  // Aborts itself from its own callback at its 5th token.
  std::atomic<uint64_t> self_id{0};
  std::atomic<int> self_tokens{0};
  const uint64_t b = eng.submit(params(prompt_of(2, 10), 4000), col.cb([&](const RequestOutput& o) {
    if (++self_tokens == 5) {
      while (self_id == 0) std::this_thread::yield();
      eng.abort(o.id);
    }
  }));
  self_id = b;
  while (seen < 3) std::this_thread::sleep_for(1ms);
  eng.abort(a);
  eng.abort(a);     // idempotent
  eng.abort(9999);  // unknown: ignored
  ASSERT_TRUE(col.wait_finished(2));
  {
    std::lock_guard<std::mutex> lk(col.mu);
    EXPECT_EQ(col.r[a].finish, FinishReason::kAbort);
    EXPECT_EQ(col.r[b].finish, FinishReason::kAbort);
    EXPECT_EQ(col.r[a].finals, 1);
    EXPECT_LT(col.r[a].tokens.size(), 4000u);
    EXPECT_GE(col.r[b].tokens.size(), 5u);
    EXPECT_LT(col.r[b].tokens.size(), 4000u);
  }
  // The final event comes after the pages were freed; the metrics snapshot follows the step.
  for (int i = 0; i < 100 && eng.metrics().pages_used != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(eng.metrics().pages_used, 0);
  EXPECT_EQ(eng.metrics().requests_finished[int(FinishReason::kAbort)], 2);
}

TEST(Engine, ShutdownFinishesOrAbortsThenRefuses) {
  FakeExecutor ex(4, 256);
  ex.before_execute = [] { std::this_thread::sleep_for(500us); };  // 4000 tokens take longer than the grace
  Engine eng(ex, nullptr, {});
  Collector col;
  eng.submit(params(prompt_of(1, 5), 3), col.cb());     // finishes within the grace period
  eng.submit(params(prompt_of(2, 5), 4000), col.cb());  // too long: aborted at the end of the grace
  eng.shutdown(200ms);
  // shutdown returns only after every final event.
  {
    std::lock_guard<std::mutex> lk(col.mu);
    EXPECT_EQ(col.finished, 2);
    EXPECT_EQ(col.r[1].finish, FinishReason::kLength);
    EXPECT_EQ(col.r[2].finish, FinishReason::kAbort);
  }
  EXPECT_THROW(eng.submit(params({1}, 1), col.cb()), QueueFull);
  eng.shutdown(0ms);  // idempotent
}

TEST(Engine, QueueFullAndInvalidRequest) {
  FakeExecutor ex(4, 64);
  std::mutex gate;
  gate.lock();  // the engine thread blocks in its first execute()
  std::atomic<bool> entered{false};
  ex.before_execute = [&] {
    entered = true;
    std::lock_guard<std::mutex> g(gate);
  };
  EngineOptions o;
  o.max_queue = 3;
  Engine eng(ex, nullptr, o);
  Collector col;
  eng.submit(params(prompt_of(1, 4), 2), col.cb());
  while (!entered) std::this_thread::sleep_for(1ms);  // the first request left the queue; the engine is blocked
  for (int i = 0; i < 3; ++i) eng.submit(params(prompt_of(10 + uint64_t(i), 4), 2), col.cb());
  try {
    eng.submit(params(prompt_of(9, 4), 2), col.cb());
    ADD_FAILURE() << "expected QueueFull";
  } catch (const QueueFull& e) {
    EXPECT_NE(std::string(e.what()).find("queue is full"), std::string::npos);
  }
  EXPECT_THROW(eng.submit(params({}, 2), col.cb()), InvalidRequest);
  EXPECT_THROW(eng.submit(params({1, 2}, 0), col.cb()), InvalidRequest);
  gate.unlock();
  ASSERT_TRUE(col.wait_finished(4));
  EXPECT_EQ(eng.max_context(), 4096);
  EXPECT_EQ(eng.executor().name(), "fake");
}

TEST(Engine, StopStringsOnStreamedText) {
  FakeExecutor ex(4, 64);
  auto tok = char_tokenizer();
  Engine eng(ex, tok, {});
  Collector col;
  std::vector<int32_t> p;
  std::string full;
  // A prompt whose greedy continuation is plain one-character tokens for 24 steps.
  for (uint64_t seed = 0;; ++seed) {
    p = prompt_of(seed, 6);
    const auto g = ex.expected_greedy(p, 24);
    if (std::all_of(g.begin(), g.end(), [](int32_t t) { return t < 94; })) {
      full = tok->decode(std::vector<int>(g.begin(), g.end()));
      break;
    }
  }
  RequestParams plain = params(p, 24);
  plain.detokenize = true;
  const uint64_t id0 = eng.submit(plain, col.cb());
  // Stop strings: one that occurs (3 characters from position 9), one that never does.
  const std::string stop = full.substr(9, 3);
  RequestParams s = plain;
  s.stop = {stop, "\x01\x02"};
  std::vector<std::string> pieces;
  const uint64_t id1 = eng.submit(s, col.cb([&](const RequestOutput& o) { pieces.push_back(o.text); }));
  ASSERT_TRUE(col.wait_finished(2));
  std::lock_guard<std::mutex> lk(col.mu);
  EXPECT_EQ(col.r[id0].text, full);
  EXPECT_EQ(col.r[id0].finish, FinishReason::kLength);
  const std::string want = full.substr(0, full.find(stop));
  EXPECT_EQ(col.r[id1].text, want);
  EXPECT_EQ(col.r[id1].finish, FinishReason::kStop);
  std::string streamed;
  for (const auto& piece : pieces) {
    streamed += piece;
    EXPECT_EQ(want.compare(0, streamed.size(), streamed), 0) << "a streamed piece is not a prefix of the text";
  }
  EXPECT_EQ(streamed, want);
}

TEST(StopText, HoldsBackPossibleStartsAndCutsAcrossPieces) {
  StopText st({"END", "xy"});
  EXPECT_FALSE(st.add("abcE"));
  EXPECT_EQ(st.take(false), "abc");  // "E" may start "END"
  EXPECT_FALSE(st.add("N"));
  EXPECT_EQ(st.take(false), "");     // "EN" still may
  EXPECT_TRUE(st.add("Dx"));  // "END" completes across three pieces
  EXPECT_TRUE(st.stopped());
  EXPECT_EQ(st.text(), "abc");
  EXPECT_EQ(st.take(false), "");
  StopText t({"END"});
  t.add("aEN");
  EXPECT_EQ(t.take(false), "a");
  t.add("x");  // "ENx" is not a start anymore
  EXPECT_EQ(t.take(false), "ENx");
  t.add("E");
  EXPECT_EQ(t.take(true), "E");  // final: everything
  EXPECT_THROW(StopText({""}), Error);
}

}  // namespace
}  // namespace qs::runtime
