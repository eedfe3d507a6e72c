// The serving engine on the real small model (qs-llama-tiny, exact CPU RefExecutor, FP32 KV pool) with its real
// tokenizer: greedy outputs equal Hugging Face's greedy ids and text for every fixture prompt, all prompts
// batched together and prefilled in small chunks; a prefix-cache hit gives bit-identical tokens and logprobs to
// a miss; seeded sampling is the same alone or batched; stop strings cut the text and are never streamed; the
// tokenizer's EOS stops a request; a KV4 pool runs; abort mid-stream frees the pages; 8 threads submitting at
// once all get the reference tokens. (This replaces the old runtime/generate loop's end-to-end test.)
#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/test_util.h"
#include "model/model.h"
#include "model/ref/ref_executor.h"
#include "runtime/engine.h"
#include "runtime/engine_core.h"
#include "tokenizer/tokenizer.h"

namespace qs::runtime {
namespace {

const char* const kModel = "models/qs-llama-tiny";
const char* const kFixture = "fixtures/reference_generations.json";

struct Case {
  std::string prompt, greedy_text;
  std::vector<int32_t> ids, greedy;
};

std::vector<Case> cases() {
  std::ifstream f(qs::test::data_path(kFixture));
  const auto j = nlohmann::json::parse(f);
  std::vector<Case> out;
  for (const auto& c : j["cases"])
    out.push_back({c["prompt"], c["greedy_text"], c["input_ids"].get<std::vector<int32_t>>(),
                   c["greedy_ids"].get<std::vector<int32_t>>()});
  return out;
}

model::Model& tiny() {
  static auto m = model::Model::load(qs::test::data_path(kModel));
  return *m;
}

struct Result {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  std::string text;
  std::vector<std::string> pieces;
  FinishReason finish = FinishReason::kNone;
  int32_t cached = 0;
};

class EngineModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!qs::test::data_available(kModel) || !qs::test::data_available(kFixture))
      GTEST_SKIP() << "test data not found under " << qs::test::data_path("") << " (set QSERVE_DATA)";
    tok_ = std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel)));
  }
  std::unique_ptr<model::RefExecutor> executor(int64_t pages = 64, int32_t page = 16,
                                               KvDType kv = KvDType::kFp32) {
    model::RefExecutorOptions o;
    o.kv_dtype = kv;
    o.num_pages = pages;
    o.page_size = page;
    return std::make_unique<model::RefExecutor>(tiny(), o);
  }
  OutputCallback collect(std::map<uint64_t, Result>& out) {
    return [&out](const RequestOutput& o) {
      Result& r = out[o.id];
      r.tokens.insert(r.tokens.end(), o.tokens.begin(), o.tokens.end());
      r.logprobs.insert(r.logprobs.end(), o.token_logprobs.begin(), o.token_logprobs.end());
      r.text += o.text;
      r.pieces.push_back(o.text);
      if (o.finish != FinishReason::kNone) {
        r.finish = o.finish;
        r.cached = o.cached_prompt_tokens;
      }
    };
  }
  static RequestParams params(const std::vector<int32_t>& prompt, int32_t n) {
    RequestParams p;
    p.prompt = prompt;
    p.max_tokens = n;
    p.ignore_eos = true;
    return p;
  }
  static void drain(EngineCore& core) {
    for (int i = 0; i < 100000 && core.has_work(); ++i) {
      core.step();
      core.check_invariants();
    }
    ASSERT_FALSE(core.has_work());
    EXPECT_EQ(core.blocks().num_used(), 0);
  }
  std::shared_ptr<const tokenizer::Tokenizer> tok_;
};

TEST_F(EngineModel, GreedyBatchedChunkedEqualsReferenceIdsAndText) {
  auto ex = executor();
  EngineOptions o;
  o.max_num_batched_tokens = 13;  // prompts of 6..10 tokens next to running decodes: chunked prefill
  EngineCore core(*ex, tok_, o);
  std::map<uint64_t, Result> out;
  const auto cs = cases();
  for (size_t i = 0; i < cs.size(); ++i) core.add(i + 1, params(cs[i].ids, 32), collect(out));
  drain(core);
  for (size_t i = 0; i < cs.size(); ++i) {
    EXPECT_EQ(out[i + 1].tokens, cs[i].greedy) << cs[i].prompt;
    EXPECT_EQ(out[i + 1].text, cs[i].greedy_text) << cs[i].prompt;
    EXPECT_EQ(out[i + 1].finish, FinishReason::kLength);
  }
}

TEST_F(EngineModel, PrefixCacheHitIsBitIdenticalToMiss) {
  // A 30+ token prompt from the fixture prompts (2 full pages of 16 hit).
  std::vector<int32_t> prompt;
  for (const auto& c : cases())
    prompt.insert(prompt.end(), c.ids.begin() + (prompt.empty() ? 0 : 1), c.ids.end());
  ASSERT_GT(prompt.size(), 33u);
  std::map<bool, Result> res;
  for (bool hit : {false, true}) {
    auto ex = executor();
    EngineOptions o;
    o.enable_prefix_caching = hit;
    EngineCore core(*ex, tok_, o);
    std::map<uint64_t, Result> out;
    RequestParams p = params(prompt, 12);
    p.logprobs = 2;
    core.add(1, p, collect(out));
    drain(core);
    core.add(2, p, collect(out));
    drain(core);
    EXPECT_EQ(out[2].cached, hit ? int32_t((prompt.size() - 1) / 16 * 16) : 0);
    EXPECT_EQ(out[1].tokens, out[2].tokens);
    res[hit] = out[2];
  }
  EXPECT_EQ(res[true].tokens, res[false].tokens);
  ASSERT_EQ(res[true].logprobs.size(), 12u);
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(res[true].logprobs[i].logprob, res[false].logprobs[i].logprob) << i;
}

TEST_F(EngineModel, SeededSamplingAloneEqualsBatched) {
  const auto cs = cases();
  RequestParams p = params(cs[0].ids, 16);
  p.sampling.temperature = 0.8f;
  p.sampling.top_p = 0.9f;
  p.sampling.seed = 7;
  std::vector<std::vector<int32_t>> got;
  for (bool batched : {false, true}) {
    auto ex = executor();
    EngineCore core(*ex, tok_, {});
    std::map<uint64_t, Result> out;
    if (batched)
      for (size_t i = 1; i < cs.size(); ++i) core.add(100 + i, params(cs[i].ids, 16), collect(out));
    core.add(1, p, collect(out));
    drain(core);
    got.push_back(out[1].tokens);
  }
  EXPECT_EQ(got[0], got[1]);
  EXPECT_NE(got[0], cs[0].greedy);
}

TEST_F(EngineModel, StopStringsEosAndKv4) {
  const auto c = cases()[0];  // " is a light green fox. It is used in ..."
  auto ex = executor();
  EngineCore core(*ex, tok_, {});
  std::map<uint64_t, Result> out;
  RequestParams s = params(c.ids, 32);
  s.stop = {"fox.", "zzzz"};
  core.add(1, s, collect(out));
  // The 5th greedy token as an extra stop id; the tokenizer's EOS would stop too (not in these 32 tokens).
  RequestParams e = params(c.ids, 32);
  e.stop_token_ids = {c.greedy[4]};
  core.add(2, e, collect(out));
  // A repetition penalty is applied on the host (the executor refuses one): it runs, and changes the output.
  RequestParams rp = params(c.ids, 32);
  rp.sampling.repetition_penalty = 1.5f;
  core.add(3, rp, collect(out));
  drain(core);
  EXPECT_EQ(out[3].finish, FinishReason::kLength);
  EXPECT_EQ(out[3].tokens.size(), 32u);
  EXPECT_NE(out[3].tokens, c.greedy);
  const std::string want = c.greedy_text.substr(0, c.greedy_text.find("fox."));
  EXPECT_EQ(out[1].text, want);
  EXPECT_EQ(out[1].finish, FinishReason::kStop);
  for (const auto& piece : out[1].pieces) EXPECT_EQ(piece.find("fox"), std::string::npos) << piece;
  EXPECT_EQ(out[2].tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + 5));
  EXPECT_EQ(out[2].finish, FinishReason::kStop);

  // A KV4 pool runs the same requests to the end (values differ from FP32 within quantization error).
  auto ex4 = executor(64, 16, KvDType::kKv4);
  EngineCore core4(*ex4, tok_, {});
  std::map<uint64_t, Result> out4;
  core4.add(1, params(c.ids, 8), collect(out4));
  drain(core4);
  EXPECT_EQ(out4[1].tokens.size(), 8u);
  EXPECT_EQ(out4[1].finish, FinishReason::kLength);
}

TEST_F(EngineModel, ThreadedAbortMidStreamAndEightThreadsSubmitting) {
  auto ex = executor(128);
  Engine eng(*ex, tok_, {});
  const auto cs = cases();
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, Result> out;
  int finished = 0;
  auto cb = [&](const RequestOutput& o) {
    std::lock_guard<std::mutex> lk(mu);
    Result& r = out[o.id];
    r.tokens.insert(r.tokens.end(), o.tokens.begin(), o.tokens.end());
    r.text += o.text;
    if (o.finish != FinishReason::kNone) {
      r.finish = o.finish;
      ++finished;
      cv.notify_all();
    }
  };
  // Aborted after it streamed a few tokens (100 would take much longer).
  const uint64_t victim = eng.submit(params(cs[0].ids, 100), [&](const RequestOutput& o) {
    cb(o);
    std::lock_guard<std::mutex> lk(mu);
    if (out[o.id].tokens.size() == 3) eng.abort(o.id);
  });
  std::map<uint64_t, size_t> which;
  std::vector<std::thread> th;
  for (size_t t = 0; t < 8; ++t)
    th.emplace_back([&, t] {
      const uint64_t id = eng.submit(params(cs[t % cs.size()].ids, 8), cb);
      std::lock_guard<std::mutex> lk(mu);
      which[id] = t % cs.size();
    });
  for (auto& t : th) t.join();
  {
    std::unique_lock<std::mutex> lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(300), [&] { return finished == 9; }));
    EXPECT_EQ(out[victim].finish, FinishReason::kAbort);
    EXPECT_LT(out[victim].tokens.size(), 100u);
    for (auto& [id, c] : which)
      EXPECT_EQ(out[id].tokens, std::vector<int32_t>(cs[c].greedy.begin(), cs[c].greedy.begin() + 8)) << id;
  }
  eng.shutdown(std::chrono::milliseconds(0));
  EXPECT_EQ(eng.metrics().pages_used, 0);
}

}  // namespace
}  // namespace qs::runtime
