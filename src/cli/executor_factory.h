// The one place the CLI turns a checkpoint folder and the device / dtype flags into a model::Executor: the exact
// CPU reference executor (model/ref) or the GPU model runner (engine/cuda), so `generate`, `ppl`, `serve` and
// `bench` share the flags and the rules:
//  * --device auto (default) picks cuda when qserve was built with CUDA and a GPU is visible, else cpu.
//  * --dtype auto runs a QoQ checkpoint as w4a8kv4 and an FP checkpoint as fp16 on the GPU (FP32 on the CPU).
//    Explicit fp8 needs an FP checkpoint, w4a8kv4 a quantized one with INT8 activations (W4A8 or W8A8); fp16 also
//    runs a quantized model over its weights dequantized to FP16 (W4A16), the GPU path of weight-only models.
//  * CPU KV: KV4 when the checkpoint was made for it (or --kv kv4), FP32 otherwise; the pool has --kv-pages pages.
//  * GPU KV: the dtype's (KV4 / FP8 / FP16), or FP16 under W4A8 / KV4 under fp16 as ablations; the pool sized from
//    free memory (--gpu-memory-utilization).
// Models load through model/checkpoint/load (HF FP -> FP32 Model, quantized -> integer-reference Model); the GPU
// runner uploads from that host model, which is freed afterwards.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/executor.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qs::cli {

struct ExecutorFlags {
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto | w4a8kv4 | fp16 | fp8 (cuda)
  std::string kv = "auto";      // auto | kv4 | fp (cpu: fp = FP32; cuda: fp = FP16 cache under W4A8, an ablation)
  double gpu_memory_utilization = 0.9;
  int64_t kv_pages = 0;         // cpu pool pages (0: enough for max_batch_seqs sequences of max_context tokens,
                                // at most 4096); cuda: a cap on the pool (0: as gpu_memory_utilization allows)
  int32_t max_context = 0;      // 0: the model's max_position_embeddings (GPU: at most 16384)
  int32_t page_size = 64;
  int32_t max_batch_tokens = 8192;
  int32_t max_batch_seqs = 256;
  bool cuda_graphs = true;
  bool gemm_tuning = true;       // cuda: measured GEMM plans at start-up (engine_options.h tune_gemms)
  int32_t keep_logits_rows = 0;  // cuda: logits rows kept on the device for evaluation (ppl --reference)
};

// Registers --device, --dtype, --kv, --gpu-memory-utilization, --kv-pages, --max-context, --no-gemm-tuning on `app`,
// except the
// flags named in `except` (e.g. {"--dtype"} for `bench`, whose --dtype is a list).
void add_executor_flags(CLI::App* app, ExecutorFlags* f, const std::vector<std::string>& except = {});

// "cpu" or "cuda" for a --device value (auto resolved); throws qs::Error for cuda on a build or machine without one.
std::string resolve_device(const std::string& device);
bool cuda_device_available();

struct LoadedExecutor {
  std::unique_ptr<model::Executor> executor;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;  // null when the folder has none
  std::string description;                                 // checkpoint + executor, for logs
  std::string device;                                      // "cpu" or "cuda"
};

// The executor for an already loaded host model (quantized: its linears are model::QuantizedLinear). `kv` is the
// CPU pool's element type; on cuda kFp32 asks for an FP16 cache (under W4A8 an ablation) and kKv4 for a KV4 cache
// (the W4A8 path's own; under fp16 weights an ablation, "KV4 alone"). `device` is resolved ("cpu" / "cuda"). The GPU runner uploads and the host model is freed on return.
std::unique_ptr<model::Executor> make_executor_for(std::unique_ptr<model::Model> m, bool quantized, KvDType kv,
                                                   const std::string& device, const ExecutorFlags& f);

// Loads `model_dir` and builds its executor. Throws qs::Error naming the flag or file at fault, before any GPU work.
LoadedExecutor load_executor(const std::string& model_dir, const ExecutorFlags& f);

}  // namespace qs::cli
