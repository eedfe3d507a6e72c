// The CLI's executor factory (see executor_factory.h).
#include "cli/executor_factory.h"

#include <algorithm>

#include "core/error.h"
#include "model/quantized/quantized_linear.h"
#include "model/ref/ref_executor.h"
#include "model/checkpoint/load.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "engine/cuda/cuda_executor.h"
#endif

namespace qs::cli {

void add_executor_flags(CLI::App* app, ExecutorFlags* f, const std::vector<std::string>& except) {
  app->add_option("--device", f->device, "auto (cuda when a GPU is present), cpu (exact reference) or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app->add_option("--dtype", f->dtype, "GPU numeric path: auto (checkpoint's), w4a8kv4, fp16, fp8")
      ->check(CLI::IsMember({"auto", "w4a8kv4", "fp16", "fp8"}));
  app->add_option("--kv", f->kv, "KV cache: auto (the checkpoint's / dtype's), kv4, fp")
      ->check(CLI::IsMember({"auto", "kv4", "fp"}));
  app->add_option("--gpu-memory-utilization", f->gpu_memory_utilization,
                  "fraction of GPU memory for weights + activations + KV pages (default 0.9)")
      ->check(CLI::Range(0.05, 1.0));
  app->add_option("--kv-pages", f->kv_pages, "CPU executor: KV pool pages of 64 tokens (default: as needed, <= 4096)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--max-context", f->max_context, "longest sequence (default: the model's context)")
      ->check(CLI::NonNegativeNumber);
  app->add_flag_callback(
      "--no-gemm-tuning", [f] { f->gemm_tuning = false; },
      "cuda W4A8: keep the cost model's GEMM plans instead of timing the candidates at start-up (a few seconds)");
  for (const std::string& name : except) {
    CLI::Option* opt = app->get_option_no_throw(name);
    QS_CHECK(opt != nullptr) << "add_executor_flags: no flag " << name << " to leave out";
    app->remove_option(opt);
  }
}

bool cuda_device_available() {
#if defined(QSERVE_HAVE_CUDA)
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

std::string resolve_device(const std::string& device) {
  if (device == "cpu") return "cpu";
  const bool have = cuda_device_available();
  if (device == "auto") return have ? "cuda" : "cpu";
  QS_CHECK(device == "cuda") << "--device must be auto, cpu or cuda, got '" << device << "'";
#if !defined(QSERVE_HAVE_CUDA)
  QS_FAIL() << "--device cuda: this qserve was built without CUDA; use --device cpu";
#endif
  QS_CHECK(have) << "--device cuda: no CUDA GPU is visible (cudaGetDeviceCount); use --device cpu";
  return "cuda";
}

std::unique_ptr<model::Executor> make_executor_for(std::unique_ptr<model::Model> m, bool quantized, KvDType kv,
                                                   const std::string& device, const ExecutorFlags& f) {
  const io::ModelConfig& c = m->config();
  const int64_t model_ctx = c.max_position_embeddings > 0 ? c.max_position_embeddings : 4096;
  const int64_t ctx = f.max_context > 0 ? std::min<int64_t>(f.max_context, model_ctx) : model_ctx;
  if (device == "cpu") {
    QS_CHECK(f.dtype == "auto") << "--dtype " << f.dtype
                                << " selects a GPU path; the CPU reference runs the checkpoint as it is";
    model::RefExecutorOptions eo;
    eo.kv_dtype = kv;
    eo.page_size = f.page_size;
    eo.max_batch_tokens = f.max_batch_tokens;
    eo.max_batch_seqs = f.max_batch_seqs;
    const int64_t per_seq = (ctx + f.page_size - 1) / f.page_size;
    eo.num_pages =
        f.kv_pages > 0 ? f.kv_pages : std::min<int64_t>(4096, per_seq * std::max<int64_t>(1, f.max_batch_seqs));
    return std::make_unique<model::RefExecutor>(std::move(m), eo);
  }
#if defined(QSERVE_HAVE_CUDA)
  engine::CudaExecutorOptions eo;
  // Weight-only quantized models (FP activations, W4A16) run on the GPU's fp16 path over dequantized weights.
  const auto* q0 = m->weights().layers.empty()
                       ? nullptr
                       : dynamic_cast<const model::QuantizedLinear*>(m->weights().layers[0].q_proj.get());
  const bool weight_only = quantized && q0 && q0->act_mode() == model::ActMode::kFloat;
  const std::string dtype = f.dtype != "auto" ? f.dtype : (quantized && !weight_only ? "w4a8kv4" : "fp16");
  eo.dtype = engine::parse_engine_dtype(dtype);
  QS_CHECK(!(eo.dtype == engine::EngineDType::kW4A8KV4 && !quantized))
      << "--dtype w4a8kv4 needs a quantized checkpoint (`qserve quantize`), and the model is an FP checkpoint";
  QS_CHECK(!(eo.dtype == engine::EngineDType::kW4A8KV4 && weight_only))
      << "--dtype w4a8kv4: the model is weight-only (FP activations); on the GPU it runs as fp16 over its "
         "dequantized weights (--dtype fp16)";
  QS_CHECK(!(eo.dtype == engine::EngineDType::kFp8 && quantized))
      << "--dtype fp8 needs an FP (Hugging Face) checkpoint, and the model is quantized";
  const bool int_gemms = eo.dtype == engine::EngineDType::kW4A8KV4;
  if (int_gemms && kv != KvDType::kKv4) eo.kv_cache = "fp16";
  if (!int_gemms && kv == KvDType::kKv4) {
    QS_CHECK(eo.dtype == engine::EngineDType::kFp16)
        << "--kv kv4 with --dtype fp8: the fp8 path runs its own FP8 cache; KV4 under FP weights needs --dtype fp16";
    eo.kv_cache = "kv4";
  }
  eo.gpu_memory_utilization = f.gpu_memory_utilization;
  eo.page_size = f.page_size;
  eo.max_batch_tokens = f.max_batch_tokens;
  eo.max_batch_seqs = f.max_batch_seqs;
  eo.max_context = int32_t(std::min<int64_t>(ctx, 16384));
  eo.cuda_graphs = f.cuda_graphs;
  eo.tune_gemms = f.gemm_tuning;
  eo.max_num_pages = f.kv_pages;  // 0: as the memory allows; a cap lets several executors share the GPU (ppl)
  eo.keep_logits_rows = f.keep_logits_rows;
  return std::make_unique<engine::CudaExecutor>(*m, eo);
#else
  QS_FAIL() << "--device cuda: this qserve was built without CUDA";
  return nullptr;
#endif
}

LoadedExecutor load_executor(const std::string& model_dir, const ExecutorFlags& f) {
  LoadedExecutor out;
  out.device = resolve_device(f.device);
  model::LoadedModel loaded = model::load_checkpoint(model_dir, {});
  if (!loaded.tokenizer_dir.empty()) {
    out.tokenizer =
        std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(loaded.tokenizer_dir));
    const io::ModelConfig& c = loaded.model->config();
    tokenizer::check_fits_model_vocab(*out.tokenizer, c.vocab_size, c.bos_token_ids, c.eos_token_ids, model_dir);
  }
  const bool kv4 = f.kv == "kv4" || (f.kv == "auto" && loaded.kv_bits == 4);
  out.description = loaded.description;
  out.executor = make_executor_for(std::move(loaded.model), loaded.quantized,
                                   kv4 ? KvDType::kKv4 : KvDType::kFp32, out.device, f);
  out.description += " on " + out.executor->name();
  return out;
}

}  // namespace qs::cli
