// `qserve serve --model DIR [...]`: the OpenAI-compatible HTTP server (server/server.h) over the serving engine
// (runtime/engine.h). The model and its executor come from the CLI's factory (cli/executor_factory.h) with its
// flags, as for `qserve generate`: --device auto picks the GPU runner when a GPU is present, else the exact CPU
// reference executor (KV4 pool for a checkpoint made for KV4, FP32 otherwise; --kv-pages pages of 64 tokens).
// `--shape NAME` (or `--config FILE`) serves random weights in that shape on the GPU runner instead
// (cli/random_executor.h; the HTTP benchmark's setting): the server then runs in ids mode (server.h,
// ServerOptions::engine_text): token-id prompts, "token_ids" in every chunk, and text decoded from the optional
// --tokenizer DIR for the ids it has (none for the others); text prompts need that tokenizer.
// SIGINT / SIGTERM: new requests get 503, the engine finishes what is running for up to --shutdown-grace
// seconds and aborts the rest, every response is completed, then the process exits 0.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "cli/command.h"
#include "cli/executor_factory.h"
#include "cli/random_executor.h"
#include "runtime/engine.h"
#include "server/generation_backend.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Options {
  std::string model, host = "127.0.0.1", served_model_name, api_key, tokenizer;
  qs::cli::RandomWeightsSpec random;  // --shape / --config instead of --model
  qs::cli::ExecutorFlags exec;
  int port = 8000;
  int max_num_seqs = 64, max_num_batched_tokens = 2048, max_queue = 4096;
  int http_threads = 0;
  double shutdown_grace = 10.0;
  size_t max_body_mb = 8;
  bool no_prefix_caching = false, log_requests = false;
};

void run(const Options& o) {
  QS_CHECK(o.max_num_seqs >= 1) << "--max-num-seqs must be at least 1";
  QS_CHECK(o.max_num_batched_tokens >= 1) << "--max-num-batched-tokens must be at least 1";
  const int sources = int(!o.model.empty()) + int(!o.random.shape.empty()) + int(!o.random.config.empty());
  QS_CHECK(sources == 1) << "serve: give exactly one of --model, --shape, --config";
  QS_CHECK(o.tokenizer.empty() || o.model.empty()) << "--tokenizer goes with --shape / --config (a checkpoint "
                                                      "brings its own)";
  std::string api_key = o.api_key;
  if (api_key.empty())
    if (const char* env = std::getenv("QSERVE_API_KEY")) api_key = env;

  // Block the shutdown signals in every thread; one thread waits for them (sigwait) below.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // The executor (cli/executor_factory.h): the GPU runner when --device resolves to cuda, else the CPU reference;
  // or random weights in a shape on the GPU runner (no tokenizer of its own: ids mode).
  qs::cli::ExecutorFlags f = o.exec;
  f.max_batch_tokens = o.max_num_batched_tokens;
  f.max_batch_seqs = o.max_num_seqs;
  std::shared_ptr<const qs::tokenizer::Tokenizer> tok;
  std::string description;
  std::unique_ptr<qs::model::Executor> executor;
  const bool random_weights = o.model.empty();
  if (!random_weights) {
    qs::cli::LoadedExecutor le = qs::cli::load_executor(o.model, f);
    QS_CHECK(le.tokenizer) << "no tokenizer.json found for " << o.model;
    tok = le.tokenizer;
    description = le.description;
    executor = std::move(le.executor);
  } else {
    if (!o.tokenizer.empty())
      tok = std::make_shared<const qs::tokenizer::Tokenizer>(qs::tokenizer::Tokenizer::from_dir(o.tokenizer));
    executor = qs::cli::make_random_weights_executor(o.random, f);
    QS_CHECK(!tok || tok->vocab_size() <= executor->config().vocab_size)
        << "--tokenizer " << o.tokenizer << " has ids up to " << tok->vocab_size() - 1
        << " but the model's vocab_size is " << executor->config().vocab_size << ": its text prompts would not be valid ids";
    description = "random weights (" + (o.random.shape.empty() ? o.random.config : o.random.shape) + ", " +
                  o.random.variant + ")" + (tok ? ", text from --tokenizer " + o.tokenizer : ", no tokenizer");
  }

  qs::runtime::EngineOptions eo;
  eo.max_num_seqs = o.max_num_seqs;
  eo.max_num_batched_tokens = o.max_num_batched_tokens;
  eo.max_queue = o.max_queue;
  eo.enable_prefix_caching = !o.no_prefix_caching;
  // Ids mode: the engine never detokenizes (no tokenizer of the model's).
  qs::runtime::Engine engine(*executor, random_weights ? nullptr : tok, eo);
  auto backend = qs::server::make_engine_backend(engine);

  qs::server::ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  if (!o.served_model_name.empty()) {
    so.served_model_name = o.served_model_name;
  } else if (random_weights) {
    so.served_model_name =
        o.random.shape.empty() ? std::filesystem::path(o.random.config).stem().string() : o.random.shape;
  } else {
    so.served_model_name = std::filesystem::path(o.model).lexically_normal().filename().string();
    if (so.served_model_name.empty())
      so.served_model_name = std::filesystem::absolute(o.model).parent_path().filename().string();
  }
  so.engine_text = !random_weights;
  so.api_key = api_key;
  so.max_body_bytes = o.max_body_mb << 20;
  so.http_threads = o.http_threads > 0 ? o.http_threads : std::max(64, o.max_num_seqs + 32);
  so.log_requests = o.log_requests;
  qs::server::Server server(so, *backend, tok);
  const int port = server.bind();
  std::fprintf(stderr, "[qserve] serving '%s' (%s; %s, max context %lld) on http://%s:%d/v1%s\n",
               so.served_model_name.c_str(), description.c_str(), executor->name().c_str(),
               (long long)engine.max_context(), o.host.c_str(), port, api_key.empty() ? "" : " (API key required)");

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    std::fprintf(stderr, "[qserve] %s: draining (grace %.1f s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM", o.shutdown_grace);
    server.begin_drain();
    const auto grace = std::chrono::milliseconds(int64_t(o.shutdown_grace * 1000));
    engine.shutdown(grace);  // finishes or aborts every request; each gets its final event
    if (!server.wait_idle(std::chrono::seconds(5)))
      std::fprintf(stderr, "[qserve] some responses were still being written after the engine stopped\n");
    server.stop();
  });
  server.run();
  waiter.join();
  std::fprintf(stderr, "[qserve] stopped\n");
}

qs::cli::CommandRegistrar reg("serve", "OpenAI-compatible HTTP server (completions, chat, streaming)", [](CLI::App* sub) {
  auto o = std::make_shared<Options>();
  sub->add_option("--model,-m", o->model, "checkpoint folder (config.json, safetensors, tokenizer.json)");
  sub->add_option("--shape", o->random.shape, "instead of --model: random weights in a built-in shape on the GPU (" +
                                                  qs::cli::builtin_shape_list() + ")");
  sub->add_option("--config", o->random.config, "instead of --model: random weights in the shape of a config.json");
  sub->add_option("--variant", o->random.variant, "random weights: W4A8 variant")
      ->check(CLI::IsMember({"per-channel", "g128"}));
  sub->add_option("--seed", o->random.seed, "random weights: seed");
  sub->add_option("--tokenizer", o->tokenizer,
                  "random weights: a tokenizer folder for text prompts and the streamed text (ids it lacks: no text)");
  sub->add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
  sub->add_option("--port", o->port, "port (default 8000; 0 = any free port)");
  sub->add_option("--served-model-name", o->served_model_name,
                  "model id clients must send (default: the folder name, or the shape)");
  sub->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1/* (or env QSERVE_API_KEY)");
  // --device --dtype --kv --gpu-memory-utilization --kv-pages --max-context, spelled as for generate / ppl / bench.
  qs::cli::add_executor_flags(sub, &o->exec);
  sub->add_option("--max-num-seqs", o->max_num_seqs, "sequences running at once (default 64)");
  sub->add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "tokens per engine step (default 2048)");
  sub->add_option("--max-queue", o->max_queue, "waiting requests before 429 (default 4096)");
  sub->add_option("--http-threads", o->http_threads, "HTTP handler threads (default max(64, max-num-seqs + 32))");
  sub->add_option("--shutdown-grace", o->shutdown_grace, "seconds to finish running requests on SIGINT/SIGTERM (default 10)");
  sub->add_option("--max-body-mb", o->max_body_mb, "largest request body in MiB (default 8)");
  sub->add_flag("--no-prefix-caching", o->no_prefix_caching, "disable prefix caching");
  sub->add_flag("--log-requests", o->log_requests, "one line per request on stderr");
  sub->callback([o] { run(*o); });
});

}  // namespace
