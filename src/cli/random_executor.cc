// Random-weight executors for benchmarks and `serve --shape` (see random_executor.h).
#include "cli/random_executor.h"

#include <algorithm>

#include "core/error.h"
#include "engine/engine_options.h"
#include "engine/model_shapes.h"

#if defined(QSERVE_HAVE_CUDA)
#include "engine/cuda/cuda_executor.h"
#endif

namespace qs::cli {

std::string builtin_shape_list() {
  std::string s;
  for (const auto& n : engine::builtin_shape_names()) s += (s.empty() ? "" : " | ") + n;
  return s;
}

io::ModelConfig random_weights_config(const RandomWeightsSpec& s) {
  QS_CHECK(s.shape.empty() != s.config.empty()) << "random weights: give exactly one of --shape, --config";
  QS_CHECK(s.variant == "per-channel" || s.variant == "g128")
      << "--variant must be per-channel or g128, got '" << s.variant << "'";
  return s.shape.empty() ? io::load_model_config(s.config) : engine::builtin_shape(s.shape);
}

std::unique_ptr<model::Executor> make_random_weights_executor(const RandomWeightsSpec& s, const ExecutorFlags& f) {
  const io::ModelConfig cfg = random_weights_config(s);
  QS_CHECK(f.device != "cpu") << "random weights (--shape / --config) run on the GPU runner only; use --model on "
                                 "the CPU";
  QS_CHECK(cuda_device_available()) << "random weights (--shape / --config) need a CUDA GPU, and "
                                    << "this build or machine has none; use --model DIR on the CPU";
#if defined(QSERVE_HAVE_CUDA)
  engine::CudaExecutorOptions o;
  o.dtype = engine::parse_engine_dtype(f.dtype == "auto" ? "w4a8kv4" : f.dtype);
  if (o.dtype == engine::EngineDType::kW4A8KV4 && f.kv == "fp") o.kv_cache = "fp16";
  o.gpu_memory_utilization = f.gpu_memory_utilization;
  o.page_size = f.page_size;
  o.max_batch_tokens = f.max_batch_tokens;
  o.max_batch_seqs = f.max_batch_seqs;
  const int64_t model_ctx = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096;
  o.max_context = int32_t(std::min<int64_t>(f.max_context > 0 ? f.max_context : model_ctx, 16384));
  o.cuda_graphs = f.cuda_graphs;
  o.tune_gemms = f.gemm_tuning;
  o.max_num_pages = f.kv_pages;
  engine::RandomWeightsOptions rw;
  rw.g128 = s.variant == "g128";
  rw.seed = s.seed;
  return std::make_unique<engine::CudaExecutor>(cfg, o, rw);
#else
  QS_FAIL() << "random weights (--shape / --config) need a build with CUDA; use --model";
  return nullptr;
#endif
}

}  // namespace qs::cli
