// The HTTP mode of the online benchmark (`qserve bench --online --url`, server/bench_http_client.h) against a
// server started in the test on a free loopback port, over the real runtime Engine and the exact CPU reference
// executor with qs-llama-tiny (greedy), plus the server features it relies on:
//  * the benchmark through HTTP gets, for every request, exactly the tokens the engine generates in process for the
//    same token-id prompt (streamed "token_ids"), and the usage counts; its errors are counted, not fatal;
//  * token-id prompt validation: bad ids, empty or mixed arrays -> 400 in OpenAI's error shape naming 'prompt',
//    and the next request succeeds;
//  * ids mode (ServerOptions::engine_text = false, `serve --shape`): the server's own text from the token ids
//    equals the engine's detokenized text; without a tokenizer, text prompts and stop strings get a clear 400.
// Lengths stay small: the reference executor is slow on purpose.
#include <gtest/gtest.h>

#include <mutex>

#include "common/test_util.h"
#include "model/ref/ref_executor.h"
#include "model/checkpoint/load.h"
#include "runtime/engine.h"
#include "server/bench_http_client.h"
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
  std::unique_ptr<Server> server, ids_server, bare_server;  // engine text; ids mode with / without a tokenizer
  int32_t vocab = 0;
};

class BenchHttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!qs::test::data_available(kModel)) return;
    s_ = new Stack;
    model::LoadedModel loaded = model::load_checkpoint(qs::test::data_path(kModel), {});
    s_->tok = std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(loaded.tokenizer_dir));
    model::RefExecutorOptions eo;
    eo.kv_dtype = KvDType::kFp32;
    eo.num_pages = 64;
    eo.max_batch_seqs = 16;
    s_->executor = std::make_unique<model::RefExecutor>(std::move(loaded.model), eo);
    s_->vocab = int32_t(s_->executor->config().vocab_size);
    runtime::EngineOptions opts;
    opts.max_num_seqs = 16;
    opts.max_num_batched_tokens = 512;
    s_->engine = std::make_unique<runtime::Engine>(*s_->executor, s_->tok, opts);
    s_->backend = make_engine_backend(*s_->engine);
    ServerOptions so;
    so.port = 0;
    so.served_model_name = "tiny";
    so.http_threads = 32;
    s_->server = std::make_unique<Server>(so, *s_->backend, s_->tok);
    s_->server->start();
    so.engine_text = false;
    s_->ids_server = std::make_unique<Server>(so, *s_->backend, s_->tok);
    s_->ids_server->start();
    s_->bare_server = std::make_unique<Server>(so, *s_->backend, nullptr);
    s_->bare_server->start();
  }
  static void TearDownTestSuite() {
    if (!s_) return;
    for (auto* s : {s_->server.get(), s_->ids_server.get(), s_->bare_server.get()}) s->begin_drain();
    s_->engine->shutdown(std::chrono::milliseconds(0));
    s_->server.reset();
    s_->ids_server.reset();
    s_->bare_server.reset();
    s_->backend.reset();
    s_->engine.reset();
    s_->executor.reset();
    delete s_;
    s_ = nullptr;
  }
  void SetUp() override { QS_REQUIRE_DATA(kModel); }

  static std::string url(const Server& s) { return "http://127.0.0.1:" + std::to_string(s.port()); }

  // The tokens the engine generates for `prompt` alone, in process (greedy, ignore_eos).
  static std::vector<int32_t> in_process(const std::vector<int32_t>& prompt, int32_t max_tokens) {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<int32_t> toks;
    bool done = false;
    runtime::RequestParams p;
    p.prompt = prompt;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.detokenize = false;
    s_->engine->submit(p, [&](const runtime::RequestOutput& o) {
      std::lock_guard<std::mutex> lk(mu);
      toks.insert(toks.end(), o.tokens.begin(), o.tokens.end());
      if (o.finish != runtime::FinishReason::kNone) done = true;
      cv.notify_all();
    });
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done; });
    return toks;
  }

  static void expect_error(const test::HttpReply& r, int status, const std::string& param, const std::string& words) {
    EXPECT_EQ(r.status, status) << r.body;
    json j;
    ASSERT_NO_THROW(j = r.json()) << r.body;
    ASSERT_TRUE(j.contains("error")) << r.body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error") << r.body;
    if (!param.empty()) EXPECT_EQ(j["error"]["param"], param) << r.body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(words), std::string::npos) << r.body;
  }

  static Stack* s_;
};
Stack* BenchHttpTest::s_ = nullptr;

TEST_F(BenchHttpTest, HttpBenchGetsTheInProcessGreedyTokensAndExactCounts) {
  runtime::OnlineBenchOptions o;
  o.num_prompts = 7;
  o.input_len = 9;
  o.output_len = 6;
  o.range_ratio = 0.5;  // prompts of 5..14 tokens, outputs of 3..9
  o.shared_prefix_len = 3;
  o.max_concurrency = 3;
  o.seed = 17;
  const auto reqs = runtime::make_bench_requests(o, s_->vocab, s_->tok.get());

  HttpBenchClientOptions co;
  co.url = url(*s_->server);
  co.connections = o.max_concurrency;
  HttpBenchClient client(co);
  EXPECT_EQ(client.model(), "tiny");  // the server's first (only) model
  // The driver submits in order: capture each request's streamed token ids.
  std::vector<std::vector<int32_t>> got(reqs.size());
  std::vector<int> chunks(reqs.size(), 0);
  size_t next = 0;
  const runtime::SubmitFn inner = client.submit_fn();
  const runtime::SubmitFn capture = [&](runtime::RequestParams p, runtime::OutputCallback cb) {
    const size_t i = next++;
    inner(std::move(p), [&, i, cb](const runtime::RequestOutput& out) {
      got[i].insert(got[i].end(), out.tokens.begin(), out.tokens.end());
      if (!out.tokens.empty()) ++chunks[i];
      cb(out);
    });
  };
  const auto before = client.engine_counters();
  const runtime::OnlineBenchResult r = runtime::run_online_bench(capture, reqs, o);
  const auto after = client.engine_counters();
  ASSERT_TRUE(before && after) << "no engine counters in /metrics";
  EXPECT_GT(after->prefix_query_tokens, before->prefix_query_tokens);  // every prompt was looked up
  EXPECT_GE(after->prefix_hit_tokens, before->prefix_hit_tokens);
  EXPECT_EQ(r.completed, o.num_prompts);
  EXPECT_EQ(r.failed, 0);
  EXPECT_LE(r.max_in_flight, o.max_concurrency);
  int64_t want_in = 0, want_out = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& rec = r.records[i];
    EXPECT_TRUE(rec.ok) << rec.error;
    EXPECT_EQ(rec.prompt_len, int32_t(reqs[i].prompt.size()));
    EXPECT_EQ(rec.output_len, reqs[i].output_len) << "request " << i;  // ignore_eos: exactly max_tokens
    EXPECT_EQ(int32_t(got[i].size()), reqs[i].output_len) << "request " << i;
    EXPECT_EQ(got[i], in_process(reqs[i].prompt, reqs[i].output_len)) << "request " << i;
    EXPECT_GE(rec.first_token_s, rec.send_s);
    EXPECT_GE(rec.end_s, rec.first_token_s);
    EXPECT_EQ(rec.itl_s.size(), size_t(chunks[i] - 1));  // ITL: one gap between consecutive token chunks
    want_in += int64_t(reqs[i].prompt.size());
    want_out += reqs[i].output_len;
  }
  EXPECT_EQ(r.total_input_tokens, want_in);
  EXPECT_EQ(r.total_output_tokens, want_out);
  EXPECT_GT(r.output_throughput, 0);
  EXPECT_GT(r.ttft.median_ms, 0);
  const json j = runtime::online_bench_json(r, o);
  EXPECT_EQ(j["completed"], o.num_prompts);
  std::printf("%s", runtime::format_online_bench(r, o).c_str());
}

TEST_F(BenchHttpTest, HttpBenchCountsRefusedRequestsAsFailures) {
  runtime::OnlineBenchOptions o;
  o.max_concurrency = 2;
  std::vector<runtime::BenchRequest> reqs(4);
  reqs[0] = {{1, 2, 3}, 3};
  reqs[1] = {{5, s_->vocab + 7, 9}, 3};  // an id outside the vocabulary: 400
  reqs[2] = {{4, 5}, 1 << 20};           // more tokens than the context: 400
  reqs[3] = {{7, 8, 9, 10}, 2};
  o.num_prompts = int32_t(reqs.size());
  HttpBenchClientOptions co;
  co.url = url(*s_->server);
  co.model = "tiny";
  co.connections = 2;
  HttpBenchClient client(co);
  const runtime::OnlineBenchResult r = runtime::run_online_bench(client.submit_fn(), reqs, o);
  EXPECT_EQ(r.completed, 2);
  EXPECT_EQ(r.failed, 2);
  EXPECT_TRUE(r.records[0].ok);
  EXPECT_TRUE(r.records[3].ok);
  EXPECT_EQ(r.records[3].output_len, 2);
  EXPECT_NE(r.records[1].error.find("HTTP 400"), std::string::npos) << r.records[1].error;
  EXPECT_NE(r.records[1].error.find("vocabulary"), std::string::npos) << r.records[1].error;
  EXPECT_NE(r.records[2].error.find("maximum context length"), std::string::npos) << r.records[2].error;
  EXPECT_EQ(r.total_output_tokens, 5);  // failed requests count no tokens
}

TEST_F(BenchHttpTest, HttpBenchClientRefusesAnUnreachableServerOrAnUnknownModel) {
  HttpBenchClientOptions co;
  co.url = url(*s_->server);
  co.model = "llama";
  try {
    HttpBenchClient c(co);
    FAIL() << "an unknown model was accepted";
  } catch (const qs::Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not serve 'llama'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tiny"), std::string::npos) << e.what();
  }
  co.model.clear();
  co.url = "https://127.0.0.1:1";
  EXPECT_THROW(HttpBenchClient{co}, qs::Error);
  co.url = "127.0.0.1:80";
  EXPECT_THROW(HttpBenchClient{co}, qs::Error);
  // A port nobody listens on (bound and closed by the kernel's choice, so free).
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  co.url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  co.connect_timeout_s = 2;
  try {
    HttpBenchClient c(co);
    FAIL() << "an unreachable server was accepted";
  } catch (const qs::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach"), std::string::npos) << e.what();
  }
}

TEST_F(BenchHttpTest, HttpBenchSendsTheApiKey) {
  ServerOptions so;
  so.port = 0;
  so.served_model_name = "tiny";
  so.api_key = "s3cret";
  Server keyed(so, *s_->backend, s_->tok);
  keyed.start();
  HttpBenchClientOptions co;
  co.url = "http://127.0.0.1:" + std::to_string(keyed.port()) + "/v1";  // a /v1 prefix is the API root
  try {
    HttpBenchClient c(co);
    FAIL() << "no API key was accepted";
  } catch (const qs::Error& e) {
    EXPECT_NE(std::string(e.what()).find("HTTP 401"), std::string::npos) << e.what();
  }
  co.api_key = "s3cret";
  co.connections = 2;
  HttpBenchClient client(co);
  runtime::OnlineBenchOptions o;
  o.num_prompts = 2;
  o.input_len = 3;
  o.output_len = 2;
  const auto r = runtime::run_online_bench(client.submit_fn(), runtime::make_bench_requests(o, s_->vocab, nullptr), o);
  EXPECT_EQ(r.completed, 2);
  EXPECT_EQ(r.total_output_tokens, 4);
  keyed.begin_drain();
  keyed.stop();
}

TEST_F(BenchHttpTest, TokenIdPromptValidationThenTheNextRequestSucceeds) {
  const int port = s_->server->port();
  auto complete = [&](json prompt) {
    return test::post_json(port, "/v1/completions",
                           {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 2}, {"temperature", 0}});
  };
  expect_error(complete(json::array({1, -1})), 400, "prompt", "out of range");
  expect_error(complete(json::array({1, s_->vocab})), 400, "prompt", "outside the vocabulary");
  expect_error(complete(json::array({s_->vocab + 100})), 400, "prompt", std::to_string(s_->vocab));
  expect_error(complete(json::array({1, 2.5})), 400, "prompt", "integers");
  expect_error(complete(json::array({1, "a"})), 400, "prompt", "integers");
  expect_error(complete(json::array({json::array({1}), json::array()})), 400, "prompt", "must not be empty");
  expect_error(complete(json::array()), 400, "prompt", "empty");
  expect_error(complete(json::array({int64_t(1) << 40})), 400, "prompt", "out of range");
  expect_error(test::post_json(port, "/v1/completions",
                               {{"model", "tiny"}, {"prompt", {1, 2}}, {"return_token_ids", "yes"}}),
               400, "return_token_ids", "boolean");
  // The next request succeeds, and return_token_ids gives the ids of the text.
  const test::HttpReply ok = test::post_json(
      port, "/v1/completions",
      {{"model", "tiny"}, {"prompt", {1, 450, 4996}}, {"max_tokens", 5}, {"temperature", 0}, {"ignore_eos", true},
       {"return_token_ids", true}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  const json c = ok.json()["choices"][0];
  EXPECT_EQ(c["token_ids"].get<std::vector<int32_t>>(), in_process({1, 450, 4996}, 5));
  EXPECT_EQ(ok.json()["usage"]["completion_tokens"], 5);
  EXPECT_EQ(ok.json()["usage"]["prompt_tokens"], 3);
}

TEST_F(BenchHttpTest, IdsModeTextEqualsTheEngineTextAndStreamsTokenIds) {
  const json req = {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 12}, {"temperature", 0},
                    {"ignore_eos", true}};
  const test::HttpReply a = test::post_json(s_->server->port(), "/v1/completions", req);
  const test::HttpReply b = test::post_json(s_->ids_server->port(), "/v1/completions", req);
  ASSERT_EQ(a.status, 200) << a.body;
  ASSERT_EQ(b.status, 200) << b.body;
  const std::string text = a.json()["choices"][0]["text"];
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(b.json()["choices"][0]["text"], text);  // the server's decode == the engine's
  EXPECT_EQ(b.json()["choices"][0]["token_ids"].size(), 12u);  // ids mode: always there
  EXPECT_FALSE(a.json()["choices"][0].contains("token_ids"));  // only on request otherwise

  // Streaming in ids mode: every chunk with tokens has token_ids; the texts concatenate to the same text.
  json sreq = req;
  sreq["stream"] = true;
  sreq["stream_options"] = {{"include_usage", true}};
  const test::HttpReply s = test::post_json(s_->ids_server->port(), "/v1/completions", sreq);
  ASSERT_EQ(s.status, 200) << s.body;
  std::string streamed;
  size_t ids = 0;
  int64_t usage = -1;
  for (const std::string& d : test::sse_data(s.body)) {
    if (d == "[DONE]") break;
    const json j = json::parse(d);
    if (j.contains("usage") && !j["usage"].is_null()) usage = j["usage"]["completion_tokens"];
    for (const auto& ch : j["choices"]) {
      streamed += ch["text"].get<std::string>();
      if (ch.contains("token_ids")) ids += ch["token_ids"].size();
    }
  }
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(ids, 12u);
  EXPECT_EQ(usage, 12);

  // Ids mode refuses stop strings (they need the engine's text).
  expect_error(test::post_json(s_->ids_server->port(), "/v1/completions",
                               {{"model", "tiny"}, {"prompt", {1, 2}}, {"stop", "x"}}),
               400, "stop", "stop_token_ids");
}

TEST_F(BenchHttpTest, WithoutTokenizerTextPromptsGetA400AndIdPromptsWork) {
  const int port = s_->bare_server->port();
  expect_error(test::post_json(port, "/v1/completions", {{"model", "tiny"}, {"prompt", "Hello"}}), 400, "prompt",
               "array of token ids");
  const test::HttpReply chat = test::post_json(
      port, "/v1/chat/completions", {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
  EXPECT_EQ(chat.status, 400) << chat.body;
  EXPECT_NE(chat.body.find("no tokenizer"), std::string::npos) << chat.body;
  const test::HttpReply ok = test::post_json(port, "/v1/completions",
                                             {{"model", "tiny"}, {"prompt", {1, 450}}, {"max_tokens", 4},
                                              {"temperature", 0}, {"ignore_eos", true}, {"logprobs", 1}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  const json c = ok.json()["choices"][0];
  EXPECT_EQ(c["text"], "");  // no tokenizer: no text, the ids carry the output
  EXPECT_EQ(c["token_ids"].get<std::vector<int32_t>>(), in_process({1, 450}, 4));
  EXPECT_EQ(c["logprobs"]["token_logprobs"].size(), 4u);
}

}  // namespace
}  // namespace qs::server
