// `qserve serve --model DIR [...]`: the OpenAI-compatible HTTP server (server/server.h) over the serving engine
// (runtime/engine.h). The model and its executor come from the CLI's factory (cli/executor_factory.h), as for
// `qserve generate`: --device auto picks the GPU runner when a GPU is present, else the exact CPU reference
// executor (KV4 pool for a checkpoint made for KV4, FP32 otherwise; --kv-pages pages of 64 tokens).
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
#include "runtime/engine.h"
#include "server/generation_backend.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Options {
  std::string model, host = "127.0.0.1", served_model_name, api_key, device = "auto", dtype = "auto";
  int32_t max_context = 0;
  int port = 8000;
  int max_num_seqs = 64, max_num_batched_tokens = 2048, max_queue = 4096;
  int64_t kv_pages = 256;
  float gpu_memory_utilization = 0.9f;
  int http_threads = 0;
  double shutdown_grace = 10.0;
  size_t max_body_mb = 8;
  bool no_prefix_caching = false, log_requests = false;
};

void run(const Options& o) {
  QS_CHECK(o.max_num_seqs >= 1) << "--max-num-seqs must be at least 1";
  QS_CHECK(o.max_num_batched_tokens >= 1) << "--max-num-batched-tokens must be at least 1";
  QS_CHECK(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1) << "--gpu-memory-utilization must be in (0, 1]";
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

  // The executor (cli/executor_factory.h): the GPU runner when --device resolves to cuda, else the CPU reference
  // (KV4 pool for a checkpoint made for KV4, FP32 otherwise; --kv-pages pages of 64 tokens).
  QS_CHECK(o.kv_pages >= 1) << "--kv-pages must be at least 1";
  qs::cli::ExecutorFlags f;
  f.device = o.device;
  f.dtype = o.dtype;
  f.gpu_memory_utilization = o.gpu_memory_utilization;
  f.kv_pages = o.kv_pages;
  f.max_batch_tokens = o.max_num_batched_tokens;
  f.max_batch_seqs = o.max_num_seqs;
  f.max_context = o.max_context;
  qs::cli::LoadedExecutor le = qs::cli::load_executor(o.model, f);
  QS_CHECK(le.tokenizer) << "no tokenizer.json found for " << o.model;
  const auto tok = le.tokenizer;
  const std::string description = le.description;
  std::unique_ptr<qs::model::Executor> executor = std::move(le.executor);

  qs::runtime::EngineOptions eo;
  eo.max_num_seqs = o.max_num_seqs;
  eo.max_num_batched_tokens = o.max_num_batched_tokens;
  eo.max_queue = o.max_queue;
  eo.enable_prefix_caching = !o.no_prefix_caching;
  qs::runtime::Engine engine(*executor, tok, eo);
  auto backend = qs::server::make_engine_backend(engine);

  qs::server::ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.served_model_name = o.served_model_name.empty()
                             ? std::filesystem::path(o.model).lexically_normal().filename().string()
                             : o.served_model_name;
  if (so.served_model_name.empty()) so.served_model_name = std::filesystem::absolute(o.model).parent_path().filename().string();
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
  sub->add_option("--model,-m", o->model, "checkpoint folder (config.json, safetensors, tokenizer.json)")->required();
  sub->add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
  sub->add_option("--port", o->port, "port (default 8000; 0 = any free port)");
  sub->add_option("--served-model-name", o->served_model_name, "model id clients must send (default: folder name)");
  sub->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1/* (or env QSERVE_API_KEY)");
  sub->add_option("--device", o->device, "auto (cuda when a GPU is present; default), cpu (reference) or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub->add_option("--dtype", o->dtype, "GPU numeric path: auto (the checkpoint's), w4a8kv4, fp16, fp8")
      ->check(CLI::IsMember({"auto", "w4a8kv4", "fp16", "fp8"}));
  sub->add_option("--max-context", o->max_context, "longest sequence (default: the model's context)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-num-seqs", o->max_num_seqs, "sequences running at once (default 64)");
  sub->add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "tokens per engine step (default 2048)");
  sub->add_option("--max-queue", o->max_queue, "waiting requests before 429 (default 4096)");
  sub->add_option("--gpu-memory-utilization", o->gpu_memory_utilization, "fraction of GPU memory (cuda; default 0.9)");
  sub->add_option("--kv-pages", o->kv_pages, "KV cache pages of 64 tokens (cpu; default 256)");
  sub->add_option("--http-threads", o->http_threads, "HTTP handler threads (default max(64, max-num-seqs + 32))");
  sub->add_option("--shutdown-grace", o->shutdown_grace, "seconds to finish running requests on SIGINT/SIGTERM (default 10)");
  sub->add_option("--max-body-mb", o->max_body_mb, "largest request body in MiB (default 8)");
  sub->add_flag("--no-prefix-caching", o->no_prefix_caching, "disable prefix caching");
  sub->add_flag("--log-requests", o->log_requests, "one line per request on stderr");
  sub->callback([o] { run(*o); });
});

}  // namespace
