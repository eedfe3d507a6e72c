// Quantized GEMMs on INT8 tensor cores: Y[m, n] (FP16) = epilogue(X[m, k] (INT8) x W[n, k]^T) for W4A8
// per-channel, W4A8 g128 (progressive) and W8A8 (QSERVE.md sections 1 and 3; formats.h). Framework-free:
// raw device pointers in a params struct, a host plan step (tile config and split-K, no device calls;
// qgemm_plan.h), a prepare step per weight (its TMA descriptors, once at upload) and a launch-only run step that
// allocates nothing and never syncs (CUDA-graph capturable). Tile configs: the one table qgemm_configs.def.
//
// Weights must be repacked at load time (gemm_w4a8/repack.h) into tensor-core fragment order; the epilogue
// matches ref_cpu/gemm_w4a8.h: per-channel y = acc*s[n]*sx[m] - sz[n]*xsum[m]; g128 y = acc*s1[n]*sx[m];
// w8a8 y = acc*s_w[n]*sx[m]; then + bias[n] + residual[m, n]; rounded once to FP16. g128's Hopper kernel feeds its
// wgmma unsigned weight bytes w8 + 128 and takes 128*qsum[m] off the INT32 accumulator (exact). The SiLU*up epilogue
// (QGemmEpilogue::kSiluMul) pairs the rounded outputs of rows 2j (gate) and 2j+1 (up) instead.
// Requirements (checked by qgemm_run, which returns an error Status): n % 16 == 0, k % 128 == 0, all pointers
// 16-byte aligned, m >= 0. Two kernel families: an sm_80 design (mma.sync, cp.async; qgemm_kernel.cuh) and the
// Hopper one (wgmma with register-A weights, TMA, mbarrier ring, warp specialization; qgemm_sm90.cuh).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "formats/kinds.h"
#include "kernels/gemm_w4a8/qgemm_configs.h"
#include "kernels/gemm_w4a8/qgemm_plan.h"

#include "core/status.h"

namespace qs::kernels {


// What the epilogue writes.
//   kLinear:  y FP16 [m, n] as above.
//   kSiluMul: the gate_up projection with its weight rows interleaved (row 2j = gate channel j, row 2j+1 = up
//             channel j; engine/weight_fusion.h interleave_quantized_rows): y FP16 [m, n/2] with
//             y[m, j] = fp16(silu(g) * u), where g and u are the pair's outputs rounded to FP16 exactly as kLinear
//             writes them and silu(g) * u = g / (1 + exp(-g)) * u in fp32 with the fast exp and divide (within one
//             FP16 ulp of the exact value). No residual. This halves the bytes the gate_up GEMM writes and the next
//             quantization reads (act_quant of y replaces silu_mul_quant: it quantizes the FP16 rounding of the
//             same fp32 value).
enum class QGemmEpilogue { kLinear, kSiluMul };

struct QGemmParams {
  WeightFormat variant = WeightFormat::kW4A8PerChannel;
  int m = 0, n = 0, k = 0;
  const int8_t* x = nullptr;          // INT8 [m, k] row-major activations
  const uint16_t* sx = nullptr;       // FP16 [m] per-token activation scale
  const uint16_t* xsum = nullptr;     // FP16 [m] activation sum (per-channel only)
  const int32_t* qsum = nullptr;      // INT32 [m] sum of each token's INT8 codes (g128 only; formats.h ActQuantRow)
  const void* w = nullptr;            // repacked weights (repack_w4 / repack_w8 layout)
  const uint16_t* scale = nullptr;    // FP16 [n]: s / s1 / s_w
  const uint16_t* szero = nullptr;    // FP16 [n] scaled zero (per-channel only)
  const uint16_t* s2zn = nullptr;     // [k/128, n] of (s2 | zn << 8) (g128 only; repack_s2zn)
  const uint16_t* bias = nullptr;     // FP16 [n], optional
  const uint16_t* residual = nullptr; // FP16 [m, n] row-major, optional (may alias y)
  uint16_t* y = nullptr;              // FP16 [m, n] row-major output ([m, n/2] for kSiluMul)
  QGemmEpilogue epilogue = QGemmEpilogue::kLinear;
  int32_t* acc_out = nullptr;         // debug: when set, INT32 [m, n] accumulators are written instead of y
  void* workspace = nullptr;          // plan.workspace_bytes of device memory (sm80 split-K counters + partials),
                                      // or null if 0. Zero-fill it ONCE after allocation: the kernels leave it zeroed.
};

// What a GEMM call needs that depends only on the weights (built once, at weight upload, on the device that
// holds them): the TMA descriptors of the repacked weights and of the g128 level-2 scales for every sm90 tile
// config of the table. With one, qgemm_run encodes only the activation descriptor (the one per-call tensor).
struct QGemmPrepared {
  WeightFormat variant = WeightFormat::kW4A8PerChannel;
  int n = 0, k = 0;
  const void* w = nullptr;          // the weights the maps describe (checked against the call's params)
  const uint16_t* s2zn = nullptr;
  int num_sms = 0, sm_version = 0;  // of the device the weights live on (for the plan)
  bool ready = false;
  CUtensorMap wmap[kQGemmNumConfigs];  // sm90 configs only (others unused)
  CUtensorMap smap[kQGemmNumConfigs];  // g128 only
  // Measured plans (qgemm_tune.h) for exact token counts, which qgemm_plan(prep, m) returns instead of the cost
  // model's; set through qgemm_set_tuned_plan.
  static constexpr int kMaxTuned = 24;
  struct Tuned {
    int m = 0;
    QGemmPlan plan;
  };
  Tuned tuned[kMaxTuned];
  int num_tuned = 0;
};

// Builds `out` for the weight fields of `weights` (variant, n, k, w, s2zn; the rest is ignored) on the current
// device. Host-only apart from reading the device's SM count and compute capability.
Status qgemm_prepare(const QGemmParams& weights, QGemmPrepared* out);
// The plan for m tokens on the weights' device: the tuned one for m when set, else the cost model's (qgemm_plan.h).
QGemmPlan qgemm_plan(const QGemmPrepared& prep, int m);
// Makes `plan` prep's plan for exactly m tokens (replacing an earlier one for m). Errors when the table is full or
// the plan's config is not one for prep's GPU.
Status qgemm_set_tuned_plan(QGemmPrepared* prep, int m, const QGemmPlan& plan);

// Launches the GEMM on `stream` (no allocation, no sync).
// With `prep` (built by qgemm_prepare for p.w) the weight descriptors are reused; without, they are encoded
// per call.
Status qgemm_run(const QGemmParams& p, const QGemmPlan& plan, cudaStream_t stream,
                 const QGemmPrepared* prep = nullptr);

}  // namespace qs::kernels
