// `qserve bench --online` (see bench_online.h).
#include "cli/bench_online.h"

#include <cstdio>

#include "core/error.h"
#include "core/file_io.h"
#include "io/model_config.h"
#include "runtime/engine.h"

#if defined(QSERVE_HAVE_CUDA)
#include "engine/cuda/cuda_executor.h"
#include "engine/model_shapes.h"
#endif

namespace qs::cli {

void run_online_bench_cmd(const OnlineBenchArgs& a) {
  const int sources = int(!a.shape.empty()) + int(!a.config.empty()) + int(!a.model.empty());
  QS_CHECK(sources == 1) << "bench --online: give exactly one of --shape, --config, --model";
  std::unique_ptr<model::Executor> ex;
  std::shared_ptr<const tokenizer::Tokenizer> tok;
  const int32_t ctx_needed = int32_t(a.bench.shared_prefix_len + a.bench.input_len * (1.0 + a.bench.range_ratio) +
                                     a.bench.output_len * (1.0 + a.bench.range_ratio) + 2);
  if (!a.model.empty()) {
    ExecutorFlags f = a.exec;
    f.max_batch_seqs = a.max_num_seqs;
    f.max_batch_tokens = a.max_num_batched_tokens;
    if (f.max_context == 0) f.max_context = ctx_needed;
    LoadedExecutor le = load_executor(a.model, f);
    ex = std::move(le.executor);
    tok = le.tokenizer;
  } else {
#if defined(QSERVE_HAVE_CUDA)
    const io::ModelConfig cfg = a.shape.empty() ? io::load_model_config(a.config) : engine::builtin_shape(a.shape);
    engine::CudaExecutorOptions o;
    o.dtype = engine::parse_engine_dtype(a.dtype);
    o.gpu_memory_utilization = a.exec.gpu_memory_utilization;
    o.max_batch_tokens = a.max_num_batched_tokens;
    o.max_batch_seqs = a.max_num_seqs;
    o.max_context = a.exec.max_context > 0 ? a.exec.max_context : ctx_needed;
    engine::RandomWeightsOptions rw;
    rw.g128 = a.variant == "g128";
    rw.seed = a.weight_seed;
    ex = std::make_unique<engine::CudaExecutor>(cfg, o, rw);
#else
    QS_FAIL() << "bench --online with random weights (--shape/--config) needs a build with CUDA; use --model";
#endif
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
  std::printf("executor: %s\n%s", ex->name().c_str(), runtime::format_online_bench(r, a.bench).c_str());
  if (!a.json_out.empty()) {
    nlohmann::json j = runtime::online_bench_json(r, a.bench);
    j["executor"] = ex->name();
    j["max_num_seqs"] = eo.max_num_seqs;
    j["prefix_caching"] = eo.enable_prefix_caching;
    j["static_batch"] = eo.static_batch;
    write_file_checked(a.json_out, j.dump(2) + "\n");
  }
  QS_CHECK(r.failed == 0) << "bench --online: " << r.failed << " of " << a.bench.num_prompts << " requests failed";
}

}  // namespace qs::cli
