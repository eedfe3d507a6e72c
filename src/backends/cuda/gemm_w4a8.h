// CUDA binding of the quantized GEMMs (kernels/gemm_w4a8/qgemm.h): uploads canonical-layout quantized weights
// (ref_cpu/gemm_w4a8.h QGemmWeights) once, repacked at load into the kernel's fragment order with the weights'
// TMA descriptors prepared once (kernels::qgemm_prepare), and exposes the plan/run split: plan(m) is host-only;
// run() launches on a stream, allocates nothing and never syncs.
// Activations, outputs and the workspace are device pointers owned by the caller.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backends/ref_cpu/gemm_w4a8.h"
#include "core/status.h"
#include "kernels/gemm_w4a8/qgemm.h"

namespace qs::cuda {

// Device-side per-call arguments (all device pointers; see kernels::QGemmParams for shapes).
struct QGemmCall {
  int m = 0;
  const int8_t* x = nullptr;           // INT8 [m, k]
  const uint16_t* sx = nullptr;        // FP16 [m]
  const uint16_t* xsum = nullptr;      // FP16 [m] (per-channel W4A8 only)
  const int32_t* qsum = nullptr;       // INT32 [m] (g128 W4A8 only)
  const uint16_t* bias = nullptr;      // FP16 [n] or null
  const uint16_t* residual = nullptr;  // FP16 [m, n] or null (may alias y)
  uint16_t* y = nullptr;               // FP16 [m, n] ([m, n/2] for kSiluMul)
  kernels::QGemmEpilogue epilogue = kernels::QGemmEpilogue::kLinear;
  int32_t* acc_out = nullptr;          // debug: INT32 [m, n] accumulators instead of y
  void* workspace = nullptr;           // plan(m).workspace_bytes bytes (null when 0), zero-filled once after
                                       // allocation (split-K counters; every run leaves them zero again)
};

// Quantized weights resident on the current CUDA device (move-only; frees on destruction).
class QGemmDeviceWeights {
 public:
  QGemmDeviceWeights() = default;
  // Validates, repacks and uploads (throws qs::Error on bad shapes or CUDA failure). Needs n % 16 == 0 and
  // k % 128 == 0.
  static QGemmDeviceWeights upload(const ref_cpu::QGemmWeights& w);
  QGemmDeviceWeights(QGemmDeviceWeights&& o) noexcept { *this = static_cast<QGemmDeviceWeights&&>(o); }
  QGemmDeviceWeights& operator=(QGemmDeviceWeights&& o) noexcept;
  QGemmDeviceWeights(const QGemmDeviceWeights&) = delete;
  QGemmDeviceWeights& operator=(const QGemmDeviceWeights&) = delete;
  ~QGemmDeviceWeights();

  WeightFormat variant() const { return variant_; }
  int n() const { return n_; }
  int k() const { return k_; }
  // Host-only: tile config and split-K for m tokens (splits_override > 0 forces the split-K factor). On sm_90 the
  // plan picks the wgmma kernel, elsewhere the mma.sync one.
  kernels::QGemmPlan plan(int m, int splits_override = 0) const;
  Status run(const kernels::QGemmPlan& plan, const QGemmCall& call, cudaStream_t stream) const;
  // The raw kernel parameters for this weight (the caller fills the per-call fields).
  kernels::QGemmParams params(const QGemmCall& call) const;
  // The weight-only part of every call (TMA descriptors), built once at upload; pass it to kernels::qgemm_run.
  const kernels::QGemmPrepared& prepared() const { return prep_; }

 private:
  void release();
  WeightFormat variant_ = WeightFormat::kW4A8PerChannel;
  int n_ = 0, k_ = 0, num_sms_ = 0, sm_version_ = 0;
  void* w_ = nullptr;            // repacked weights
  uint16_t* scale_ = nullptr;    // FP16 [n]
  uint16_t* szero_ = nullptr;    // FP16 [n] (per-channel)
  uint16_t* s2zn_ = nullptr;     // [k/128, n] (g128)
  kernels::QGemmPrepared prep_;  // descriptors of w_ / s2zn_ (qgemm_prepare at upload)
};

}  // namespace qs::cuda
