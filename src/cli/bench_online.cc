// `qserve bench --online` (see bench_online.h).
#include "cli/bench_online.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"
#include "io/model_config.h"
#include "runtime/engine.h"
#include "server/bench_http_client.h"

namespace qs::cli {
namespace {

void finish(const OnlineBenchArgs& a, const runtime::OnlineBenchResult& r, const std::string& header,
            nlohmann::json j) {
  std::printf("%s\n%s", header.c_str(), runtime::format_online_bench(r, a.bench).c_str());
  if (!a.json_out.empty()) {
    nlohmann::json all = runtime::online_bench_json(r, a.bench);
    all.update(j);
    write_file_checked(a.json_out, all.dump(2) + "\n");
  }
  QS_CHECK(r.failed == 0) << "bench --online: " << r.failed << " of " << a.bench.num_prompts << " requests failed"
                          << [&] {
                               for (const auto& rec : r.records)
                                 if (!rec.ok) return " (first: " + rec.error + ")";
                               return std::string();
                             }();
}

// --url: the same requests through a server's streaming completions endpoint.
void run_http(const OnlineBenchArgs& a) {
  io::ModelConfig cfg;
  std::shared_ptr<const tokenizer::Tokenizer> tok;
  if (!a.model.empty()) {
    cfg = io::load_model_config(a.model);
    if (std::filesystem::exists(a.model + "/tokenizer.json") || std::filesystem::exists(a.model + "/tokenizer.model"))
      tok = std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(a.model));
  } else {
    cfg = random_weights_config(a.random);
  }
  server::HttpBenchClientOptions co;
  co.url = a.url;
  co.api_key = a.api_key;
  if (co.api_key.empty())
    if (const char* env = std::getenv("QSERVE_API_KEY")) co.api_key = env;
  co.model = a.served_model_name;
  co.connections = a.bench.max_concurrency > 0 ? a.bench.max_concurrency : std::min(a.bench.num_prompts, 1024);
  co.keep_alive = a.bench.max_concurrency > 0;
  server::HttpBenchClient client(co);
  const auto reqs = runtime::make_bench_requests(a.bench, cfg.vocab_size, tok.get());
  std::fprintf(stderr, "bench --online: http %s (model '%s'), %d requests, %d connections\n", a.url.c_str(),
               client.model().c_str(), a.bench.num_prompts, co.connections);
  const auto before = client.engine_counters();
  runtime::OnlineBenchResult r = runtime::run_online_bench(client.submit_fn(), reqs, a.bench);
  const auto after = client.engine_counters();
  if (before && after) {  // a qserve server: its engine block too (other traffic during the run would count)
    r.prefix_query_tokens = after->prefix_query_tokens - before->prefix_query_tokens;
    r.prefix_hit_tokens = after->prefix_hit_tokens - before->prefix_hit_tokens;
    r.preemptions = after->preemptions - before->preemptions;
  }
  finish(a, r, "mode: http " + a.url + " (model " + client.model() + ")",
         {{"mode", "http"}, {"url", a.url}, {"model", client.model()}, {"connections", co.connections}});
}

}  // namespace

void run_online_bench_cmd(const OnlineBenchArgs& a) {
  const int sources = int(!a.random.shape.empty()) + int(!a.random.config.empty()) + int(!a.model.empty());
  QS_CHECK(sources == 1) << "bench --online: give exactly one of --shape, --config, --model"
                         << (a.url.empty() ? "" : " (with --url: the vocabulary the prompts are drawn from)");
  if (!a.url.empty()) return run_http(a);
  std::unique_ptr<model::Executor> ex;
  std::shared_ptr<const tokenizer::Tokenizer> tok;
  const int32_t ctx_needed = int32_t(a.bench.shared_prefix_len + a.bench.input_len * (1.0 + a.bench.range_ratio) +
                                     a.bench.output_len * (1.0 + a.bench.range_ratio) + 2);
  ExecutorFlags f = a.exec;
  f.max_batch_seqs = a.max_num_seqs;
  f.max_batch_tokens = a.max_num_batched_tokens;
  if (f.max_context == 0) f.max_context = ctx_needed;
  if (!a.model.empty()) {
    LoadedExecutor le = load_executor(a.model, f);
    ex = std::move(le.executor);
    tok = le.tokenizer;
  } else {
    ex = make_random_weights_executor(a.random, f);
  }
  runtime::EngineOptions eo;
  eo.max_num_seqs = a.max_num_seqs;
  eo.max_num_batched_tokens = a.max_num_batched_tokens;
  eo.enable_prefix_caching = !a.no_prefix_caching;
  eo.static_batch = a.static_batch;
  eo.max_queue = std::max(eo.max_queue, a.bench.num_prompts);
  std::fprintf(stderr, "bench --online: %s, %d requests, max_num_seqs %d, prefix caching %s%s\n",
               ex->name().c_str(), a.bench.num_prompts, eo.max_num_seqs, eo.enable_prefix_caching ? "on" : "off",
               eo.static_batch ? ", static batches" : "");
  runtime::Engine engine(*ex, tok, eo);
  const runtime::OnlineBenchResult r = runtime::run_online_bench(engine, a.bench, tok.get());
  engine.shutdown(std::chrono::milliseconds(0));
  finish(a, r, "mode: in-process, executor: " + ex->name(),
         {{"mode", "in-process"},
          {"executor", ex->name()},
          {"max_num_seqs", eo.max_num_seqs},
          {"prefix_caching", eo.enable_prefix_caching},
          {"static_batch", eo.static_batch}});
}

}  // namespace qs::cli
