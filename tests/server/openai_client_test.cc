// The official `openai` npm package (tests/server/openai_client, installed by scripts/setup) against the server
// on a free loopback port: completions and chat, streaming and not, usage, stop strings, typed errors and an
// aborted stream (client_test.mjs has the checks). Here the engine is the scripted FakeBackend, so this pins
// the HTTP/SSE protocol against the real client; server_engine_test.cc runs the same script on the real engine.
// Skips with a message when node or the package is absent.
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "server/openai_client_runner.h"
#include "server/server.h"
#include "server/server_test_util.h"

namespace qs::server {
namespace {

TEST(OpenAiClientTest, FakeEngine) {
  const std::string why = test::openai_client_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  auto tok = std::make_shared<const tokenizer::Tokenizer>(
      tokenizer::Tokenizer::from_dir(qs::test::data_path("models/qs-llama-tiny")));
  test::FakeBackend backend(tok, {.max_context = 2048, .max_queue = 100, .step_ms = 2});
  ServerOptions o;
  o.port = 0;
  o.served_model_name = "tiny";
  Server server(o, backend, tok);
  server.start();
  std::string out;
  const int rc = test::run_openai_client(server.port(), "tiny", out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find(" passed, 0 failed"), std::string::npos) << out;
  std::printf("%s", out.c_str());
}

}  // namespace
}  // namespace qs::server
