// Measured plan selection for the quantized GEMMs ("autotuning", as TensorRT-LLM and Triton-based engines do at
// start-up): times the candidates of qgemm_plan_candidates (qgemm_plan.h) for one (format, M, N, K) on the device
// and returns the fastest. The cost model behind qgemm_plan is fitted to sweeps and its picks sum to within a few
// percent of the fastest candidates, but on single layers it misses by up to 12-20% (stream-K on deep-K layers at
// small M, which it cannot price; BENCHMARKS.md "Measured plans"). A serving engine runs the same few (M, N, K) for
// hours, so it times them once at start-up (engine/cuda: the decode graph buckets and the largest step) and stores
// the winners in the weights' QGemmPrepared (qgemm_set_tuned_plan). Any plan gives bit-identical results (integer
// accumulation), so tuning changes speed only.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "core/status.h"
#include "kernels/gemm_w4a8/qgemm.h"

namespace qs::kernels {

struct QGemmTuneOptions {
  int max_split_plans = 6;  // model-ranked unsplit / split-K candidates (stream-K ones come on top)
  int replays = 7;          // graph replays per candidate; the median counts
  double min_gain = 0.03;   // the cost model's pick stays unless a candidate is at least this much faster
};

struct QGemmTuneResult {
  QGemmPlan plan;               // the chosen plan
  QGemmPlan model_plan;         // the cost model's (qgemm_plan)
  double us = 0, model_us = 0;  // their measured microseconds per launch
  int candidates = 0;           // candidates timed (those needing more workspace than given are skipped)
};

// The largest workspace any candidate for (v, m, n, k) needs (stream-K and global split-K partials).
size_t qgemm_tune_workspace_bytes(WeightFormat v, int m, int n, int k, int num_sms, int sm_version,
                                  const QGemmTuneOptions& opt = {});

// `calls`: launches of one weight shape and format at one m (activations, outputs and weights valid; typically one
// linear of several layers, so that each launch's weights come from DRAM as in a model step), `preps[i]` the
// prepared weights of calls[i]. Each candidate runs once eagerly, then as one CUDA graph of all the calls, replayed
// opt.replays times (the median counts); when the fastest is not the model's pick, the two are timed three more
// times, alternately, and the winner is kept only if the median of its rounds beats the model's by opt.min_gain.
// `workspace` (zero-filled, left zeroed by the kernels) of `workspace_bytes` serves every candidate; candidates that
// need more are skipped (an error if the model's plan does). Overwrites the calls' outputs. Errors: calls that
// differ in format, shape or epilogue, a call without its own prepared weights.
// Synchronizes `stream` (which must not be capturing and must not be the legacy default stream).
Status qgemm_tune(const std::vector<QGemmParams>& calls, const std::vector<const QGemmPrepared*>& preps,
                  cudaStream_t stream, void* workspace, size_t workspace_bytes, const QGemmTuneOptions& opt,
                  QGemmTuneResult* out);

}  // namespace qs::kernels
