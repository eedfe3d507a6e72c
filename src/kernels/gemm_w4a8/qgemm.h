// Quantized GEMMs on INT8 tensor cores: Y[m, n] (FP16) = epilogue(X[m, k] (INT8) x W[n, k]^T) for W4A8
// per-channel, W4A8 g128 (progressive) and W8A8 (QSERVE.md sections 1 and 3; formats.h). Framework-free:
// raw device pointers in a params struct, a host plan step (tile config and split-K, no device calls) and a
// launch-only run step that allocates nothing and never syncs (CUDA-graph capturable).
//
// Weights must be repacked at load time (gemm_w4a8/repack.h) into tensor-core fragment order; the epilogue
// matches ref_cpu/gemm_w4a8.h: per-channel y = acc*s[n]*sx[m] - sz[n]*xsum[m]; g128 y = acc*s1[n]*sx[m];
// w8a8 y = acc*s_w[n]*sx[m]; then + bias[n] + residual[m, n]; rounded once to FP16.
// Requirements (checked by qgemm_run, which returns an error Status): n % 16 == 0, k % 128 == 0, all pointers
// 16-byte aligned, m >= 0. Two kernel families: an sm_80 design (mma.sync, cp.async; qgemm_kernel.cuh) and the
// Hopper one (wgmma with register-A weights, TMA, mbarrier ring, warp specialization; qgemm_sm90.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "formats/kinds.h"

#include "core/status.h"

namespace qs::kernels {


struct QGemmParams {
  WeightFormat variant = WeightFormat::kW4A8PerChannel;
  int m = 0, n = 0, k = 0;
  const int8_t* x = nullptr;          // INT8 [m, k] row-major activations
  const uint16_t* sx = nullptr;       // FP16 [m] per-token activation scale
  const uint16_t* xsum = nullptr;     // FP16 [m] activation sum (per-channel only)
  const void* w = nullptr;            // repacked weights (repack_w4 / repack_w8 layout)
  const uint16_t* scale = nullptr;    // FP16 [n]: s / s1 / s_w
  const uint16_t* szero = nullptr;    // FP16 [n] scaled zero (per-channel only)
  const uint16_t* s2zn = nullptr;     // [k/128, n] of (s2 | zn << 8) (g128 only; repack_s2zn)
  const uint16_t* bias = nullptr;     // FP16 [n], optional
  const uint16_t* residual = nullptr; // FP16 [m, n] row-major, optional (may alias y)
  uint16_t* y = nullptr;              // FP16 [m, n] row-major output
  int32_t* acc_out = nullptr;         // debug: when set, INT32 [m, n] accumulators are written instead of y
  void* workspace = nullptr;          // plan.workspace_bytes of device memory (split-K counters + partials), or
                                      // null if 0. Zero-fill it ONCE after allocation: the kernels leave it zeroed.
};

struct QGemmPlan {
  int config = 0;              // tile configuration index (see qgemm_config_name)
  int splits = 1;              // split-K factor
  size_t workspace_bytes = 0;  // device workspace run() needs
};

// Chooses the tile config and split-K for a problem on a GPU with `num_sms` multiprocessors and compute
// capability `sm_version` (e.g. 90; >= 90 selects the wgmma kernel), host only. `splits_override` > 0 forces a
// split-K factor (tests), clamped to the number of 128-wide K tiles.
QGemmPlan qgemm_plan(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override = 0);
const char* qgemm_config_name(int config);  // e.g. "bn64_bm16", "sm90_bn256_bm128"
int qgemm_num_configs();                    // configs 0..n-1 (any may be forced in a plan)
bool qgemm_config_is_sm90(int config);      // needs an sm_90a device

// Launches the GEMM on `stream` (no allocation, no sync).
Status qgemm_run(const QGemmParams& p, const QGemmPlan& plan, cudaStream_t stream);

}  // namespace qs::kernels
