// The GPU model runner: a model::Executor (model/executor.h) that runs the Llama family on one CUDA device in
// QServe's order (QSERVE.md section 3), over a paged KV pool it owns. Plain C++ header (the CUDA state is behind a
// pimpl), built only with CUDA (CMake leaves src/engine/cuda/ out otherwise).
//
// Per layer, W4A8KV4: RMSNorm+INT8 quant (+ activation sum for per-channel) -> fused QKV W4A8 GEMM (+ bias) ->
// fused RoPE + KV4 paged write -> attention (sequences with q_len == 1: paged decode kernel, everything from the
// cache; q_len > 1: causal prefill kernel, own tokens unquantized FP16, prefix from the cache; the CPU reference
// executor follows the same rule) -> INT8 quant -> o_proj W4A8 with the residual add in its epilogue ->
// RMSNorm+quant -> fused gate_up W4A8 with the SiLU*up epilogue (gate/up rows interleaved at load) -> INT8 quant ->
// down_proj W4A8 with the residual epilogue. FP16 baseline:
// the same order with cuBLAS FP16 GEMMs (FP32 accumulation; residual as beta = 1), FP16 RMSNorm / SiLU*up and an
// FP16 paged cache. FP8 baseline: the W4A8KV4 order with FP8 e4m3 per-token activations (the norm_quant _fp8
// kernels), cuBLASLt FP8 GEMMs (per-channel weight scales; residual as beta = 1) and an FP8 paged cache.
// FP16 residual stream; final RMSNorm + FP16 lm_head (cuBLAS, FP32 logits) only for the rows that need logits;
// sampling on the GPU (kernels/sampling: greedy, temperature, top-k, top-p, drawn with model::sample_uniform(seed,
// step), the semantics of every executor); a repetition penalty is rejected (ForwardBatch carries no history).
//
// Memory: every activation buffer and workspace is allocated at construction for max_batch_tokens /
// max_batch_seqs; the KV pool takes what is left (engine_options.h), plus one hidden scratch page that padded
// CUDA-graph rows read. Pure decode steps run as CUDA graphs, captured lazily per padded batch-size bucket
// (1, 2, 4, ..., max_batch_seqs); the decode attention plan of a bucket is made for max_context, so the graph is
// valid for any context; per-step values (ids, positions, slots, context lengths, block tables) live in one
// device buffer refreshed by one copy before each replay.
//
// Evaluation (model/window_scorer.h): score_window runs an all_logits window and scores it on the device
// (kernels/eval/logit_scores.h: NLL, and against another executor's kept logits KL and top-1), lm_head chunk by
// chunk, so the window's logits never leave the GPU; only the per-row scores come back. A reference keeps its
// whole window (options keep_logits_rows) for the other executors of the same device to read.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine_options.h"
#include "model/executor.h"
#include "model/model.h"
#include "model/window_scorer.h"

namespace qs::engine {

class CudaExecutor final : public model::Executor, public model::WindowScorer {
 public:
  // From a loaded host model on the current device. An FP model (FpLinear layers) runs dtype fp16 or fp8 (weights
  // quantized to e4m3 per output channel at load); a quantized one
  // (model::QuantizedLinear with INT8 activations, model/checkpoint/load.h) runs w4a8kv4 (W4A8 or W8A8 weights),
  // or fp16 over its weights dequantized to FP16 (the only GPU path of a weight-only model). Other combinations,
  // shapes the kernels cannot take (hidden / intermediate not multiples of 128, head_dim != 128, GQA group > 16),
  // a GPU other than sm_90, or too little memory throw qs::Error before any kernel runs.
  CudaExecutor(const model::Model& model, const CudaExecutorOptions& opt);
  // Random weights in the shape of `config` (benchmarks), generated on the device.
  CudaExecutor(const io::ModelConfig& config, const CudaExecutorOptions& opt, const RandomWeightsOptions& rw);
  ~CudaExecutor() override;
  CudaExecutor(const CudaExecutor&) = delete;
  CudaExecutor& operator=(const CudaExecutor&) = delete;

  std::string name() const override;  // "cuda w4a8kv4 per-channel (NVIDIA H200)"
  const io::ModelConfig& config() const override;
  model::KvPoolInfo pool() const override;
  int64_t max_context() const override;
  int32_t max_batch_tokens() const override;
  int32_t max_batch_seqs() const override;
  model::ForwardResult execute(const model::ForwardBatch& batch) override;
  // model::WindowScorer (see the header comment): rows are the batch's tokens in batch order.
  model::WindowScores score_window(const model::ForwardBatch& batch, const std::vector<int32_t>& labels,
                                   const model::KeptLogits* ref, bool keep) override;
  model::KeptLogits kept_logits() const override;

  // ---- extras for tests and benchmarks ----
  EngineDType dtype() const;
  void set_cuda_graphs(bool on);
  int num_graphs() const;  // captured buckets so far
  struct Memory {
    int64_t weight_bytes = 0, activation_bytes = 0, workspace_bytes = 0, kv_pool_bytes = 0;
    int64_t gpu_total = 0, gpu_free_before_pool = 0;
  };
  Memory memory() const;
  // When on, execute() runs eagerly (no graphs) with CUDA events around every launch, and last_profile() returns
  // milliseconds per kernel class (gemm, attention, rope_kv_write, norm_quant, lm_head, sampling, other), then
  // "kernels" (their sum) and "step" (the whole step, events at both ends; step - kernels = gaps).
  void set_profiling(bool on);
  std::vector<std::pair<std::string, double>> last_profile() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs::engine
