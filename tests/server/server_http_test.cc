// The HTTP layer of `qserve serve` against a scripted engine (FakeBackend, server_test_util.h) and the real
// qs-llama-tiny tokenizer and chat template: response shapes, SSE streaming, every error status with its OpenAI
// error JSON (each followed by a request that succeeds), auth, queue full, draining, and client disconnects
// aborting their engine requests (streaming and not) while other requests in flight are undisturbed.
#include <gtest/gtest.h>

#include <future>

#include "common/test_util.h"
#include "server/api_error.h"
#include "server/openai_request.h"
#include "server/server.h"
#include "server/server_test_util.h"
#include "tokenizer/chat_template.h"

namespace qs::server {
namespace {

using nlohmann::json;
using test::FakeBackend;
using test::HttpReply;

constexpr const char* kModel = "models/qs-llama-tiny";

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!qs::test::data_available(kModel)) GTEST_SKIP() << "test data not found: " << qs::test::data_path(kModel);
    tok_ = std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel)));
  }
  void start(ServerOptions o = {}, FakeBackend::Options fo = {}) {
    backend_ = std::make_unique<FakeBackend>(tok_, fo);
    o.port = 0;
    o.served_model_name = "tiny";
    if (o.max_body_bytes == ServerOptions{}.max_body_bytes) o.max_body_bytes = 64 * 1024;
    server_ = std::make_unique<Server>(o, *backend_, tok_);
    server_->start();
    port_ = server_->port();
  }
  void TearDown() override {
    server_.reset();
    backend_.reset();
  }
  HttpReply complete(json body) {
    if (!body.contains("model")) body["model"] = "tiny";
    return test::post_json(port_, "/v1/completions", body);
  }
  std::vector<int32_t> encode(const std::string& s, bool bos = true) {
    auto ids = tok_->encode(s, bos);
    return {ids.begin(), ids.end()};
  }
  // Asserts an OpenAI error body with `status`, then that a good request succeeds right after.
  void expect_error(const HttpReply& r, int status, const std::string& param = "", const std::string& needle = "") {
    SCOPED_TRACE(r.body);
    EXPECT_EQ(r.status, status);
    json j;
    ASSERT_NO_THROW(j = r.json());
    ASSERT_TRUE(j.contains("error"));
    const json& e = j["error"];
    EXPECT_TRUE(e["message"].is_string());
    EXPECT_FALSE(e["message"].get<std::string>().empty());
    EXPECT_TRUE(e["type"].is_string());
    EXPECT_TRUE(e.contains("param"));
    EXPECT_TRUE(e.contains("code"));
    if (!param.empty()) EXPECT_EQ(e["param"], param);
    if (!needle.empty()) EXPECT_NE(e["message"].get<std::string>().find(needle), std::string::npos);
    const HttpReply ok = complete({{"prompt", "The sea"}, {"max_tokens", 2}, {"temperature", 0}});
    EXPECT_EQ(ok.status, 200) << ok.body;
  }

  std::shared_ptr<const tokenizer::Tokenizer> tok_;
  std::unique_ptr<FakeBackend> backend_;
  std::unique_ptr<Server> server_;
  int port_ = 0;
};

TEST_F(ServerTest, CompletionShapeTextAndUsage) {
  start();
  const HttpReply r = complete({{"prompt", "Once upon a time"}, {"max_tokens", 5}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers.at("content-type"), "application/json");
  const json j = r.json();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_TRUE(j["created"].is_number_integer());
  ASSERT_EQ(j["choices"].size(), 1u);
  const auto prompt = encode("Once upon a time");
  EXPECT_EQ(j["choices"][0]["text"], backend_->expected_text(prompt, 5));
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["usage"]["total_tokens"], prompt.size() + 5);
  // What reached the engine.
  const runtime::RequestParams p = backend_->last_params();
  EXPECT_EQ(p.prompt, prompt);
  EXPECT_EQ(p.max_tokens, 5);
  EXPECT_EQ(p.sampling.temperature, 0.0f);
}

TEST_F(ServerTest, SamplingFieldsReachTheEngine) {
  start();
  const HttpReply r = complete({{"prompt", "Hi"}, {"max_tokens", 3}, {"temperature", 0.7}, {"top_p", 0.9},
                                {"top_k", 40}, {"seed", 1234}, {"stop", {"xyz", "abc"}}, {"repetition_penalty", 1.1},
                                {"stop_token_ids", {7}}, {"unknown_field", {{"a", 1}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  const runtime::RequestParams p = backend_->last_params();
  EXPECT_FLOAT_EQ(p.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.9f);
  EXPECT_EQ(p.sampling.top_k, 40);
  EXPECT_EQ(p.sampling.seed, 1234u);
  EXPECT_FLOAT_EQ(p.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"xyz", "abc"}));
  EXPECT_EQ(p.stop_token_ids, (std::vector<int32_t>{7}));
  // Defaults: OpenAI's temperature 1 and max_tokens 16 for completions.
  ASSERT_EQ(complete({{"prompt", "Hi"}}).status, 200);
  EXPECT_EQ(backend_->last_params().sampling.temperature, 1.0f);
  EXPECT_EQ(backend_->last_params().max_tokens, 16);
}

// Seeds are exact: the largest uint64 reaches the engine unchanged; negative, fractional and too-large seeds are a
// 400 naming 'seed' (they used to wrap or saturate silently), and the next request still succeeds.
TEST_F(ServerTest, SeedIsExactOrRefused) {
  start();
  ASSERT_EQ(complete({{"prompt", "Hi"}, {"max_tokens", 1}, {"seed", 18446744073709551615ull}}).status, 200);
  EXPECT_EQ(backend_->last_params().sampling.seed, 18446744073709551615ull);
  for (const nlohmann::json& bad : {nlohmann::json(-1), nlohmann::json(1.5), nlohmann::json(1e20), nlohmann::json("7")}) {
    const HttpReply r = complete({{"prompt", "Hi"}, {"max_tokens", 1}, {"seed", bad}});
    EXPECT_EQ(r.status, 400) << bad.dump() << ": " << r.body;
    EXPECT_EQ(r.json()["error"]["param"], "seed") << r.body;
  }
  EXPECT_EQ(complete({{"prompt", "Hi"}, {"max_tokens", 1}, {"seed", 0}}).status, 200);
}

TEST_F(ServerTest, StopStringIsCut) {
  start();
  const auto prompt = encode("one two three four");
  const std::string full = backend_->expected_text(prompt, 8);
  const std::string stop = full.substr(full.size() / 2, 3);
  const HttpReply r = complete({{"prompt", "one two three four"}, {"max_tokens", 8}, {"stop", stop}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(r.json()["choices"][0]["finish_reason"], "stop");
}

TEST_F(ServerTest, StreamedStopAndEcho) {
  start();
  const auto prompt = encode("one two three four");
  const std::string full = backend_->expected_text(prompt, 8);
  const std::string stop = full.substr(full.size() / 2, 3);
  const HttpReply r = complete({{"prompt", "one two three four"}, {"max_tokens", 8}, {"stop", {stop}}, {"stream", true}});
  ASSERT_EQ(r.status, 200);
  const auto data = test::sse_data(r.body);
  std::string text, finish;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    const json c = json::parse(data[i]);
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, full.substr(0, full.find(stop)));
  EXPECT_EQ(finish, "stop");
  // echo: the prompt text comes first, streamed or not.
  const HttpReply e = complete({{"prompt", "one two"}, {"max_tokens", 2}, {"echo", true}});
  ASSERT_EQ(e.status, 200);
  EXPECT_EQ(e.json()["choices"][0]["text"], "one two" + backend_->expected_text(encode("one two"), 2));
  const HttpReply es = complete({{"prompt", "one two"}, {"max_tokens", 2}, {"echo", true}, {"stream", true}});
  const auto ed = test::sse_data(es.body);
  ASSERT_GE(ed.size(), 2u);
  EXPECT_EQ(json::parse(ed[0])["choices"][0]["text"], "one two");
}

TEST_F(ServerTest, ChatCompletionUsesTheChatTemplate) {
  start();
  const json msgs = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                 {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "Hello"}}})}}});
  const HttpReply r = test::post_json(port_, "/v1/chat/completions",
                                      {{"model", "tiny"}, {"messages", msgs}, {"max_completion_tokens", 4}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  const std::string text = tokenizer::apply_chat_template(
      *tok_, {{"system", "Be brief."}, {"user", "Hello"}}, /*add_generation_prompt=*/true);
  const auto prompt = encode(text, /*bos=*/false);
  EXPECT_EQ(backend_->last_params().prompt, prompt);
  EXPECT_EQ(j["choices"][0]["message"]["content"], backend_->expected_text(prompt, 4));
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
}

TEST_F(ServerTest, StreamingCompletionMatchesNonStreaming) {
  start();
  const json body = {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 7}, {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  const HttpReply r = test::post_json(port_, "/v1/completions", body);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers.at("content-type"), "text/event-stream");
  const auto data = test::sse_data(r.body);
  ASSERT_GE(data.size(), 3u) << r.body;
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < data.size(); ++i) {
    const json c = json::parse(data[i]);
    EXPECT_EQ(c["object"], "text_completion");
    ASSERT_EQ(c["choices"].size(), 1u);
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  const json usage_chunk = json::parse(data[data.size() - 2]);
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"]["completion_tokens"], 7);
  EXPECT_EQ(text, backend_->expected_text(encode("The quick brown fox"), 7));
  EXPECT_EQ(finish, "length");
}

TEST_F(ServerTest, StreamingChatStartsWithTheRoleAndEndsWithFinish) {
  start();
  const HttpReply r = test::post_json(
      port_, "/v1/chat/completions",
      {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "Hi there"}}}}, {"max_tokens", 3}, {"stream", true}});
  ASSERT_EQ(r.status, 200);
  const auto data = test::sse_data(r.body);
  ASSERT_GE(data.size(), 3u);
  const json first = json::parse(data[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  const json last = json::parse(data[data.size() - 2]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(data.back(), "[DONE]");
}

TEST_F(ServerTest, SeveralPromptsAndNGiveIndexedChoices) {
  start();
  const HttpReply r = complete({{"prompt", {"alpha beta", "gamma delta epsilon"}}, {"n", 2}, {"max_tokens", 3}, {"seed", 5}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  ASSERT_EQ(j["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(j["choices"][i]["index"], i);
  EXPECT_EQ(j["choices"][0]["text"], backend_->expected_text(encode("alpha beta"), 3));
  EXPECT_EQ(j["choices"][3]["text"], backend_->expected_text(encode("gamma delta epsilon"), 3));
  EXPECT_EQ(j["usage"]["prompt_tokens"], encode("alpha beta").size() + encode("gamma delta epsilon").size());
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  // Token-id prompts are passed through unchanged.
  ASSERT_EQ(complete({{"prompt", {1, 300, 301}}, {"max_tokens", 1}}).status, 200);
  EXPECT_EQ(backend_->last_params().prompt, (std::vector<int32_t>{1, 300, 301}));
}

TEST_F(ServerTest, LogprobsShapes) {
  start();
  HttpReply r = complete({{"prompt", "a b c"}, {"max_tokens", 3}, {"logprobs", 2}});
  ASSERT_EQ(r.status, 200) << r.body;
  json lp = r.json()["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 3u);
  EXPECT_EQ(lp["token_logprobs"][0], -0.5);
  ASSERT_EQ(lp["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(lp["text_offset"][0], 0);
  r = test::post_json(port_, "/v1/chat/completions",
                      {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}, {"max_tokens", 2},
                       {"logprobs", true}, {"top_logprobs", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  lp = r.json()["choices"][0]["logprobs"];
  ASSERT_EQ(lp["content"].size(), 2u);
  EXPECT_TRUE(lp["content"][0]["token"].is_string());
  EXPECT_TRUE(lp["content"][0]["bytes"].is_array());
  EXPECT_EQ(lp["content"][0]["top_logprobs"].size(), 3u);
}

TEST_F(ServerTest, ModelsHealthMetrics) {
  start();
  HttpReply r = test::http(port_, "GET", "/v1/models", "", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.json()["data"][0]["id"], "tiny");
  EXPECT_EQ(r.json()["data"][0]["max_model_len"], 256);
  EXPECT_EQ(test::http(port_, "GET", "/v1/models/tiny", "", "").status, 200);
  EXPECT_EQ(test::http(port_, "GET", "/v1/models/other", "", "").status, 404);
  EXPECT_EQ(test::http(port_, "GET", "/health", "", "").status, 200);
  ASSERT_EQ(complete({{"prompt", "x"}, {"max_tokens", 2}}).status, 200);
  r = test::http(port_, "GET", "/metrics", "", "");
  ASSERT_EQ(r.status, 200);
  for (const char* s : {"qserve_http_requests_total{code=\"200\"}", "qserve_num_requests_running 0",
                        "qserve_kv_pages_used 0", "qserve_prefix_cache_hit_rate", "qserve_generation_tokens_total",
                        "qserve_time_to_first_token_seconds_bucket{le=\"0.1\"} 2",
                        "qserve_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3",
                        "qserve_time_to_first_token_seconds_count 3", "# TYPE qserve_inter_token_latency_seconds histogram",
                        "qserve_requests_finished_total{reason=\"length\"} 1"})
    EXPECT_NE(r.body.find(s), std::string::npos) << s << "\n" << r.body;
}

TEST_F(ServerTest, BadInputGetsOpenAiErrors) {
  start();
  expect_error(test::http(port_, "POST", "/v1/completions", "{\"model\": \"tiny\", \"prompt\": "), 400, "", "malformed JSON");
  expect_error(test::http(port_, "POST", "/v1/completions", "[1, 2]"), 400);
  expect_error(test::http(port_, "POST", "/v1/completions", std::string(30000, '[') + std::string(30000, ']')), 400);
  expect_error(test::http(port_, "POST", "/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}"), 400);
  expect_error(complete({{"prompt", "x"}, {"max_tokens", "16"}}), 400, "max_tokens");
  expect_error(complete({{"prompt", "x"}, {"max_tokens", 2.5}}), 400, "max_tokens");
  expect_error(complete({{"prompt", "x"}, {"temperature", "hot"}}), 400, "temperature");
  expect_error(complete({{"prompt", "x"}, {"stream", 1}}), 400, "stream");
  expect_error(complete({{"prompt", 42}}), 400, "prompt");
  expect_error(complete({{"max_tokens", 3}}), 400, "prompt");
  expect_error(complete({{"prompt", {1, "a"}}}), 400, "prompt");
  expect_error(complete({{"prompt", {1, 999999}}}), 400, "prompt", "vocabulary");
  expect_error(complete({{"prompt", "x"}, {"stop", 3}}), 400, "stop");
  expect_error(complete({{"prompt", "x"}, {"max_tokens", -1}}), 400, "max_tokens");
  expect_error(complete({{"prompt", "x"}, {"max_tokens", 0}}), 400, "max_tokens");
  expect_error(complete({{"prompt", "x"}, {"max_tokens", 1000000000000LL}}), 400, "max_tokens", "256");
  expect_error(complete({{"prompt", "x"}, {"temperature", 2.5}}), 400, "temperature");
  expect_error(complete({{"prompt", "x"}, {"temperature", -0.1}}), 400, "temperature");
  expect_error(complete({{"prompt", "x"}, {"top_p", 0}}), 400, "top_p");
  expect_error(complete({{"prompt", "x"}, {"top_p", 1.5}}), 400, "top_p");
  expect_error(complete({{"prompt", "x"}, {"top_k", -2}}), 400, "top_k");
  expect_error(complete({{"prompt", "x"}, {"n", 0}}), 400, "n");
  expect_error(complete({{"prompt", "x"}, {"n", 1000}}), 400, "n");
  expect_error(complete({{"prompt", "x"}, {"logprobs", 50}}), 400, "logprobs");
  expect_error(complete({{"prompt", "x"}, {"presence_penalty", 0.5}}), 400, "presence_penalty");
  expect_error(complete({{"prompt", "x"}, {"stream_options", {{"include_usage", true}}}}), 400, "stream_options");
  expect_error(complete({{"model", "gpt-4"}, {"prompt", "x"}}), 404, "model", "gpt-4");
  EXPECT_EQ(complete({{"model", "gpt-4"}, {"prompt", "x"}}).json()["error"]["code"], "model_not_found");
  // Prompt longer than the context (256): 400 naming both numbers.
  std::string longp;
  for (int i = 0; i < 300; ++i) longp += " word";
  const size_t n_long = encode(longp).size();
  ASSERT_GT(n_long, 256u);
  const HttpReply lr = complete({{"prompt", longp}, {"max_tokens", 1}});
  expect_error(lr, 400, "prompt", "256");
  EXPECT_NE(lr.body.find(std::to_string(n_long)), std::string::npos) << lr.body;
  EXPECT_EQ(lr.json()["error"]["code"], "context_length_exceeded");
  // Chat-specific.
  auto chat = [&](json b) {
    b["model"] = "tiny";
    return test::post_json(port_, "/v1/chat/completions", b);
  };
  expect_error(chat({{"messages", "hi"}}), 400, "messages");
  expect_error(chat({{"messages", json::array()}}), 400, "messages");
  expect_error(chat({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), 400, "messages[0].role");
  expect_error(chat({{"messages", {{{"role", "user"}, {"content", 5}}}}}), 400, "messages[0].content");
  expect_error(chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"top_logprobs", 3}}), 400, "top_logprobs");
  expect_error(chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", {{{"type", "function"}}}}}), 400,
               "tools");
  // Transport-level errors.
  expect_error(test::http(port_, "POST", "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"x\"}", "text/plain"), 415);
  expect_error(test::http(port_, "POST", "/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"x\"}", ""), 415);
  expect_error(test::http(port_, "POST", "/v1/completions", "{\"prompt\":\"" + std::string(100 * 1024, 'a') + "\"}"), 413);
  expect_error(test::http(port_, "GET", "/v1/nothing", "", ""), 404);
  expect_error(test::http(port_, "POST", "/v2/completions", "{}"), 404);
  const HttpReply m = test::http(port_, "GET", "/v1/completions", "", "");
  expect_error(m, 405);
  EXPECT_EQ(m.headers.at("allow"), "POST");
  expect_error(test::http(port_, "DELETE", "/v1/models", "", ""), 405);
  expect_error(test::http(port_, "PUT", "/health", "{}"), 405);
}

TEST_F(ServerTest, ErrorsDoNotDisturbAStreamInFlight) {
  start({}, {.max_context = 256, .max_queue = 1000, .step_ms = 20});
  auto stream = std::async(std::launch::async, [&] {
    return test::post_json(port_, "/v1/completions",
                           {{"model", "tiny"}, {"prompt", "A long walk"}, {"max_tokens", 30}, {"stream", true}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(complete({{"prompt", "x"}, {"temperature", 9}}).status, 400);
  EXPECT_EQ(test::http(port_, "POST", "/v1/completions", "{bad").status, 400);
  EXPECT_EQ(test::http(port_, "GET", "/nope", "", "").status, 404);
  EXPECT_EQ(test::http(port_, "POST", "/v1/completions", "{}", "text/plain").status, 415);
  const HttpReply r = stream.get();
  ASSERT_EQ(r.status, 200);
  const auto data = test::sse_data(r.body);
  std::string text;
  for (size_t i = 0; i + 1 < data.size(); ++i) text += json::parse(data[i])["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, backend_->expected_text(encode("A long walk"), 30));
  EXPECT_EQ(data.back(), "[DONE]");
}

TEST_F(ServerTest, BearerAuth) {
  ServerOptions o;
  o.api_key = "sk-secret-123";
  start(o);
  const std::string body = json{{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 1}}.dump();
  HttpReply r = test::http(port_, "POST", "/v1/completions", body);
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.json()["error"]["type"], "authentication_error");
  EXPECT_EQ(test::http(port_, "POST", "/v1/completions", body, "application/json", {"Authorization: Bearer sk-secret-12"}).status, 401);
  EXPECT_EQ(test::http(port_, "POST", "/v1/completions", body, "application/json", {"Authorization: Bearer sk-secret-1234"}).status, 401);
  EXPECT_EQ(test::http(port_, "POST", "/v1/completions", body, "application/json", {"Authorization: Basic sk-secret-123"}).status, 401);
  EXPECT_EQ(test::http(port_, "GET", "/v1/models", "", "").status, 401);
  EXPECT_EQ(test::http(port_, "POST", "/v1/completions", body, "application/json", {"Authorization: Bearer sk-secret-123"}).status, 200);
  EXPECT_EQ(test::http(port_, "GET", "/v1/models", "", "", {"Authorization: Bearer sk-secret-123"}).status, 200);
  EXPECT_EQ(test::http(port_, "GET", "/health", "", "").status, 200);  // probes need no key
  EXPECT_EQ(backend_->submitted(), 1);
}

TEST_F(ServerTest, QueueFullIs429WithRetryAfter) {
  start({}, {.max_context = 256, .max_queue = 2, .step_ms = 5});
  backend_->pause(true);
  auto a = std::async(std::launch::async, [&] { return complete({{"prompt", "a"}, {"max_tokens", 2}}); });
  auto b = std::async(std::launch::async, [&] { return complete({{"prompt", "b"}, {"max_tokens", 2}}); });
  while (backend_->live() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const HttpReply r = complete({{"prompt", "c"}, {"max_tokens", 2}});
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers.at("retry-after"), "1");
  EXPECT_EQ(r.json()["error"]["type"], "rate_limit_error");
  backend_->pause(false);
  EXPECT_EQ(a.get().status, 200);
  EXPECT_EQ(b.get().status, 200);
  // n = 2 with room for one: refused whole, and the choice that was queued is aborted.
  backend_->pause(true);
  auto held = std::async(std::launch::async, [&] { return complete({{"prompt", "h"}, {"max_tokens", 2}}); });
  while (backend_->live() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const HttpReply r2 = complete({{"prompt", "c"}, {"max_tokens", 2}, {"n", 2}});
  EXPECT_EQ(r2.status, 429) << r2.body;
  const auto t0 = std::chrono::steady_clock::now();
  while (backend_->aborted() < 1 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(backend_->aborted(), 1);
  EXPECT_EQ(backend_->live(), 1);
  backend_->pause(false);
  EXPECT_EQ(held.get().status, 200);
  expect_error(r2, 429);
}

TEST_F(ServerTest, DrainingAnswers503) {
  start();
  server_->begin_drain();
  const HttpReply r = complete({{"prompt", "a"}, {"max_tokens", 2}});
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers.at("retry-after"), "1");
  EXPECT_EQ(r.json()["error"]["type"], "service_unavailable_error");
  EXPECT_EQ(test::http(port_, "GET", "/health", "", "").status, 503);
  EXPECT_EQ(test::http(port_, "GET", "/metrics", "", "").status, 200);
}

TEST_F(ServerTest, EngineShutdownAbortsInFlightAndRefusesNew) {
  start({}, {.max_context = 256, .max_queue = 1000, .step_ms = 20});
  auto s = std::async(std::launch::async, [&] {
    return test::post_json(port_, "/v1/completions",
                           {{"model", "tiny"}, {"prompt", "x y"}, {"max_tokens", 200}, {"stream", true}});
  });
  auto ns = std::async(std::launch::async, [&] { return complete({{"prompt", "x y"}, {"max_tokens", 200}}); });
  while (backend_->live() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  server_->begin_drain();
  backend_->shutdown();
  EXPECT_TRUE(server_->wait_idle(std::chrono::seconds(5)));
  const HttpReply sr = s.get();
  EXPECT_EQ(sr.status, 200);
  const auto data = test::sse_data(sr.body);
  ASSERT_GE(data.size(), 2u);
  EXPECT_EQ(data.back(), "[DONE]");
  EXPECT_EQ(json::parse(data[data.size() - 2])["choices"][0]["finish_reason"], "abort");
  EXPECT_EQ(ns.get().status, 503);
}

TEST_F(ServerTest, StreamingClientDisconnectAbortsAtOnce) {
  start({}, {.max_context = 256, .max_queue = 1000, .step_ms = 20});
  test::RawConn c(port_);
  c.send_all(test::request_text(
      "POST", "/v1/completions",
      json{{"model", "tiny"}, {"prompt", "x y z"}, {"max_tokens", 200}, {"stream", true}}.dump()));
  std::string got;
  while (test::sse_data(got.substr(got.find("\r\n\r\n") == std::string::npos ? 0 : got.find("\r\n\r\n"))).size() < 1 &&
         got.find("data: ") == std::string::npos)
    ASSERT_TRUE(c.read_some(got, 1000));
  EXPECT_EQ(backend_->live(), 1);
  c.close();
  const auto t0 = std::chrono::steady_clock::now();
  while (backend_->live() > 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(backend_->live(), 0);
  EXPECT_EQ(backend_->aborted(), 1);
  EXPECT_LT(ms, 1000.0);  // a few engine steps (20 ms) and poll slices (20 ms), not the 200-token request
  EXPECT_TRUE(server_->wait_idle(std::chrono::seconds(2)));
  EXPECT_EQ(server_->counters().client_disconnects, 1);
  EXPECT_EQ(complete({{"prompt", "x"}, {"max_tokens", 2}}).status, 200);
}

TEST_F(ServerTest, WaitingClientDisconnectAbortsToo) {
  start();
  backend_->pause(true);  // nothing is generated: the only way to notice is watching the socket
  for (bool stream : {false, true}) {
    test::RawConn c(port_);
    c.send_all(test::request_text(
        "POST", "/v1/completions", json{{"model", "tiny"}, {"prompt", "x"}, {"max_tokens", 5}, {"stream", stream}}.dump()));
    while (backend_->live() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    c.close();
    const auto t0 = std::chrono::steady_clock::now();
    while (backend_->live() > 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2))
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    EXPECT_EQ(backend_->live(), 0) << "stream " << stream;
  }
  EXPECT_EQ(backend_->aborted(), 2);
}

TEST(OpenAiRequestTest, ParsesPromptForms) {
  using ojson = nlohmann::ordered_json;
  OpenAiRequest r = parse_completion_request(ojson{{"model", "m"}, {"prompt", {{1, 2}, {3}}}, {"max_tokens", 4.0}});
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_TRUE(r.prompts[0].is_ids);
  EXPECT_EQ(r.prompts[1].ids, std::vector<int32_t>{3});
  EXPECT_EQ(*r.max_tokens, 4);
  r = parse_completion_request(ojson{{"model", "m"}, {"prompt", {"a"}}, {"temperature", nullptr}});
  EXPECT_EQ(r.prompts[0].text, "a");
  EXPECT_EQ(r.sampling.temperature, 1.0f);
  r = parse_chat_request(ojson{{"model", "m"},
                               {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                               {"max_tokens", 5},
                               {"max_completion_tokens", 7},
                               {"logprobs", true},
                               {"top_logprobs", 2}});
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_THROW(parse_completion_request(ojson{{"model", "m"}, {"prompt", "x"}, {"echo", true}, {"logprobs", 1}}), ApiError);
  EXPECT_THROW(parse_completion_request(ojson{{"model", 3}, {"prompt", "x"}}), ApiError);
}

}  // namespace
}  // namespace qs::server
