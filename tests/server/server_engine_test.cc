// `qserve serve` end to end on the real runtime Engine and the exact CPU reference executor with qs-llama-tiny:
//  * a bounded load test on loopback: 64 concurrent streaming clients (greedy), each text equal to the text of
//    the same request run alone, no errors, and no KV pages in use afterwards (read from /metrics); then a
//    second wave of 64 where half the clients disconnect after their first chunk: the other half still get
//    their exact texts, the disconnected ones are aborted, and the pages are all back;
//  * the official `openai` npm client (client_test.mjs) against the real engine.
// max_tokens stays small: the reference executor is slow on purpose (a few hundred tokens/s on 2 cores).
#include <gtest/gtest.h>

#include <future>

#include "common/test_util.h"
#include "model/ref/ref_executor.h"
#include "model/checkpoint/load.h"
#include "runtime/engine.h"
#include "server/openai_client_runner.h"
#include "server/server.h"
#include "server/server_test_util.h"

namespace qs::server {
namespace {

using nlohmann::json;
constexpr const char* kModel = "models/qs-llama-tiny";

struct Stack {
  std::shared_ptr<const tokenizer::Tokenizer> tok;
  std::unique_ptr<model::Executor> executor;
  std::unique_ptr<runtime::Engine> engine;
  std::unique_ptr<GenerationBackend> backend;
  std::unique_ptr<Server> server;
  int port = 0;
};

class ServerEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!qs::test::data_available(kModel)) return;
    s_ = new Stack;
    model::LoadedModel loaded = model::load_checkpoint(qs::test::data_path(kModel), {});
    s_->tok = std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(loaded.tokenizer_dir));
    model::RefExecutorOptions eo;
    eo.kv_dtype = KvDType::kFp32;
    eo.num_pages = 96;  // 64 running requests of < 64 tokens each need one page apiece
    eo.max_batch_seqs = 64;
    s_->executor = std::make_unique<model::RefExecutor>(std::move(loaded.model), eo);
    runtime::EngineOptions opts;
    opts.max_num_seqs = 64;
    opts.max_num_batched_tokens = 2048;
    s_->engine = std::make_unique<runtime::Engine>(*s_->executor, s_->tok, opts);
    s_->backend = make_engine_backend(*s_->engine);
    ServerOptions so;
    so.port = 0;
    so.served_model_name = "tiny";
    so.http_threads = 160;
    s_->server = std::make_unique<Server>(so, *s_->backend, s_->tok);
    s_->server->start();
    s_->port = s_->server->port();
  }
  static void TearDownTestSuite() {
    if (!s_) return;
    s_->server->begin_drain();
    s_->engine->shutdown(std::chrono::milliseconds(0));
    s_->server.reset();
    s_->backend.reset();
    s_->engine.reset();
    s_->executor.reset();
    delete s_;
    s_ = nullptr;
  }
  void SetUp() override { QS_REQUIRE_DATA(kModel); }

  static std::map<std::string, double> metrics() {
    std::map<std::string, double> m;
    const test::HttpReply r = test::http(s_->port, "GET", "/metrics", "", "");
    size_t pos = 0;
    while (pos < r.body.size()) {
      size_t eol = r.body.find('\n', pos);
      if (eol == std::string::npos) eol = r.body.size();
      const std::string line = r.body.substr(pos, eol - pos);
      pos = eol + 1;
      if (line.empty() || line[0] == '#') continue;
      const size_t sp = line.rfind(' ');
      m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
    }
    return m;
  }
  // Polls /metrics until nothing runs, waits or holds pages (the final events precede the responses, so this
  // is immediate in practice).
  static std::map<std::string, double> settled_metrics() {
    std::map<std::string, double> m;
    for (int i = 0; i < 200; ++i) {
      m = metrics();
      if (m["qserve_kv_pages_used"] == 0 && m["qserve_num_requests_running"] == 0 &&
          m["qserve_num_requests_waiting"] == 0)
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return m;
  }

  struct StreamResult {
    int status = 0;
    std::string text, finish, error;
    bool done = false;
  };
  // One streaming completion over a raw connection; with `disconnect`, closes right after the first text chunk.
  static StreamResult stream(const std::string& prompt, int max_tokens, bool disconnect) {
    StreamResult res;
    test::RawConn c(s_->port);
    c.send_all(test::request_text("POST", "/v1/completions",
                                  json{{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", max_tokens},
                                       {"temperature", 0}, {"stream", true}}
                                      .dump()));
    std::string raw;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
    while (std::chrono::steady_clock::now() < deadline) {
      const bool open = c.read_some(raw, 200);
      const test::HttpReply r = test::parse_reply(raw);
      res.status = r.status;
      if (r.status != 0 && r.status != 200) {
        res.error = r.body;
        if (!open) break;
        continue;
      }
      const auto data = test::sse_data(r.body);
      if (disconnect && !data.empty()) {
        c.close();
        return res;
      }
      if (!data.empty() && data.back() == "[DONE]") {
        for (size_t i = 0; i + 1 < data.size(); ++i) {
          const json j = json::parse(data[i]);
          if (j.contains("error")) res.error = j.dump();
          for (const auto& ch : j["choices"]) {
            res.text += ch["text"].get<std::string>();
            if (!ch["finish_reason"].is_null()) res.finish = ch["finish_reason"];
          }
        }
        res.done = true;
        break;
      }
      if (!open) break;
    }
    return res;
  }

  static Stack* s_;
};
Stack* ServerEngineTest::s_ = nullptr;

const std::vector<std::string> kPrompts = {
    "The history of the city", "Once upon a time", "In the beginning", "The river flows",
    "A small dog",             "The king said",    "Water is",         "The old man and the",
};

TEST_F(ServerEngineTest, SixtyFourConcurrentStreamsMatchTheirSoloTextsThenHalfDisconnect) {
  constexpr int kClients = 64, kMaxTokens = 8;
  // Each prompt alone first (non-streaming, one at a time): the reference greedy texts.
  std::vector<std::string> solo;
  for (const auto& p : kPrompts) {
    const test::HttpReply r = test::post_json(s_->port, "/v1/completions",
                                              {{"model", "tiny"}, {"prompt", p}, {"max_tokens", kMaxTokens}, {"temperature", 0}});
    ASSERT_EQ(r.status, 200) << r.body;
    solo.push_back(r.json()["choices"][0]["text"]);
    EXPECT_EQ(r.json()["usage"]["completion_tokens"], kMaxTokens);
  }
  auto m0 = settled_metrics();

  // Wave 1: 64 concurrent streams.
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<StreamResult>> wave;
  for (int i = 0; i < kClients; ++i)
    wave.push_back(std::async(std::launch::async, [i] { return stream(kPrompts[i % kPrompts.size()], kMaxTokens, false); }));
  for (int i = 0; i < kClients; ++i) {
    const StreamResult r = wave[i].get();
    EXPECT_EQ(r.status, 200) << "client " << i << ": " << r.error;
    EXPECT_TRUE(r.done) << "client " << i;
    EXPECT_TRUE(r.error.empty()) << r.error;
    EXPECT_EQ(r.text, solo[i % solo.size()]) << "client " << i;
    EXPECT_EQ(r.finish, "length");
  }
  const double wave1_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto m1 = settled_metrics();
  EXPECT_EQ(m1["qserve_kv_pages_used"], 0);
  EXPECT_EQ(m1["qserve_num_requests_running"], 0);
  EXPECT_EQ(m1["qserve_generation_tokens_total"] - m0["qserve_generation_tokens_total"], kClients * kMaxTokens);
  EXPECT_EQ(m1["qserve_requests_finished_total{reason=\"length\"}"] -
                m0["qserve_requests_finished_total{reason=\"length\"}"], kClients);

  // Wave 2: half of the clients ask for 400 tokens and hang up after their first chunk.
  t0 = std::chrono::steady_clock::now();
  wave.clear();
  for (int i = 0; i < kClients; ++i) {
    const bool quitter = i % 2 == 1;
    wave.push_back(std::async(std::launch::async, [i, quitter] {
      return stream(kPrompts[i % kPrompts.size()], quitter ? 400 : kMaxTokens, quitter);
    }));
  }
  for (int i = 0; i < kClients; ++i) {
    const StreamResult r = wave[i].get();
    EXPECT_EQ(r.status, 200) << "client " << i << ": " << r.error;
    if (i % 2 == 0) {
      EXPECT_TRUE(r.done) << "client " << i;
      EXPECT_EQ(r.text, solo[i % solo.size()]) << "client " << i;
    }
  }
  auto m2 = settled_metrics();
  const double wave2_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(m2["qserve_kv_pages_used"], 0);
  EXPECT_EQ(m2["qserve_num_requests_running"], 0);
  EXPECT_EQ(m2["qserve_num_requests_waiting"], 0);
  EXPECT_EQ(m2["qserve_requests_finished_total{reason=\"abort\"}"] - m1["qserve_requests_finished_total{reason=\"abort\"}"],
            kClients / 2);
  EXPECT_EQ(m2["qserve_client_disconnects_total"] - m1["qserve_client_disconnects_total"], kClients / 2);
  // The quitters were cut within a few engine steps, not after 400 tokens each.
  EXPECT_LT(m2["qserve_generation_tokens_total"] - m1["qserve_generation_tokens_total"],
            kClients / 2 * kMaxTokens + kClients / 2 * 100);
  EXPECT_EQ(m2["qserve_requests_finished_total{reason=\"error\"}"], 0);
  std::printf("wave 1 (64 streams x %d tokens): %.2f s; wave 2 (32 complete, 32 disconnect): %.2f s\n", kMaxTokens,
              wave1_s, wave2_s);
}

TEST_F(ServerEngineTest, OfficialOpenAiClient) {
  const std::string why = test::openai_client_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  std::string out;
  const int rc = test::run_openai_client(s_->port, "tiny", out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find(" passed, 0 failed"), std::string::npos) << out;
  std::printf("%s", out.c_str());
  const auto m = settled_metrics();
  EXPECT_EQ(m.at("qserve_kv_pages_used"), 0);
}

}  // namespace
}  // namespace qs::server
