// Options of the GPU model runner (engine/cuda/cuda_executor.h), host-only so that the CLI and the executor factory
// can parse and carry them on a build without CUDA.
//  * dtype: the numeric path. w4a8kv4: W4A8 GEMMs (per-channel or g128, from a QoQ checkpoint or random weights)
//    and a KV4 paged cache; fp16: cuBLAS FP16 GEMMs and an FP16 paged cache (the baseline); fp8: FP8 e4m3 weights
//    (per output channel) and per-token FP8 activations through cuBLASLt (backends/cuda/fp8_gemm.h) and an FP8 e4m3
//    paged cache (TensorRT-LLM's fastest Hopper setting).
//  * Ablation modes (the rows of ACCURACY.md on the GPU): dtype w4a8kv4 also runs W8A8 checkpoints / in-memory RTN
//    models (INT8 per-channel weights through the same INT8 tensor-core GEMM, kernels/gemm_w4a8 with
//    WeightFormat::kW8A8); dtype fp16 also runs a quantized model's weights dequantized to FP16 at load (W4A16:
//    what a W4A16 kernel multiplies with; the CPU reference uses the same dequantized values in FP32), and
//    kv_cache "kv4" gives the fp16 path a KV4 cache (FP16 weights and activations, KV4 alone).
//  * The KV page pool is sized from the free GPU memory after weights, activations and workspaces:
//    pool bytes = free - (1 - gpu_memory_utilization) * total (max_num_pages caps it, for tests).
#pragma once

#include <cstdint>
#include <string>

namespace qs::engine {

enum class EngineDType : int32_t { kW4A8KV4 = 0, kFp16 = 1, kFp8 = 2 };

// "w4a8kv4", "fp16", "fp8".
const char* engine_dtype_name(EngineDType d);
// Parses one of the names above; throws qs::Error naming the accepted ones.
EngineDType parse_engine_dtype(const std::string& s);

struct CudaExecutorOptions {
  EngineDType dtype = EngineDType::kW4A8KV4;
  double gpu_memory_utilization = 0.9;  // in (0, 1]
  int32_t page_size = 64;               // tokens per KV page (multiple of 16)
  int32_t max_batch_tokens = 8192;      // most tokens in one execute() (sizes every activation buffer)
  int32_t max_batch_seqs = 256;         // most sequences in one execute() (and the largest CUDA-graph bucket)
  int32_t max_context = 0;              // longest context; 0: min(max_position_embeddings, 16384)
  int32_t max_logit_rows = 0;           // FP32 logits rows computed per lm_head pass; 0: max(max_batch_seqs, 256)
  bool cuda_graphs = true;              // capture pure decode steps per padded batch-size bucket
  // W4A8 on sm_90: time the GEMM plan candidates at start-up for the decode buckets and the largest step and keep
  // the fastest (kernels/gemm_w4a8/qgemm_tune.h; 4-6 s for Llama-3-8B on an H200); false: the cost model's plans.
  bool tune_gemms = true;
  int64_t max_num_pages = 0;            // > 0: cap on the KV pool (tests); 0: as the memory allows
  bool verbose = true;                  // log the memory plan to stderr
  // KV cache override for ablations: "" (the dtype's own: KV4 for w4a8kv4, FP16 for fp16, FP8 for fp8), "fp16"
  // (W4A8 GEMMs over an FP16 cache, i.e. W4A8KV16) or "kv4" (the fp16 path over a KV4 cache; refused for fp8).
  std::string kv_cache;
  // Rows of FP32 logits the executor can keep on the device for model::WindowScorer (keep = true: the reference
  // of a perplexity evaluation, whose logits the other models are scored against); allocated at construction,
  // so the KV pool is planned around it. 0: none.
  int32_t keep_logits_rows = 0;
};

// Random weights (benchmarks): the W4A8 variant and the seed.
struct RandomWeightsOptions {
  bool g128 = false;  // W4A8 weight variant for dtype w4a8kv4: per-channel (false) or g128 (true)
  uint64_t seed = 1;
};

}  // namespace qs::engine
