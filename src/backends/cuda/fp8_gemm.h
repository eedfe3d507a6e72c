// cuBLASLt FP8 GEMM of the FP8 baseline engine path (issue 8: "FP8 e4m3 weights and per-token activations
// through cuBLASLt"):
//   Y[m][n] FP16 = (X[m][k] e4m3 * sx[m]) x (W[n][k] e4m3 * sw[n])^T (+ residual[m][n] FP16)
// Per-token x per-channel scaling is done inside cuBLASLt with its outer-vector scale mode
// (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F on A and B, supported on sm_90 since cuBLAS 12.9): no epilogue
// kernel. FP32 accumulation (fast-accumulate off). Numerics: ref_cpu/fp8_gemm.h; X and sx come from
// kernels/norm_quant's _fp8 entry points, W and sw from ref_cpu::quantize_fp8_weights at upload.
// Plan / run split: the constructor creates the cuBLASLt handle, descriptors and one heuristic algorithm per m
// bucket (powers of two up to max_m); run() only sets the call's pointers and m on the descriptors and launches
// (no allocation, no sync; CUDA-graph capturable with the caller's preallocated workspace). One Fp8Gemm per shape;
// run() mutates its descriptors, so one Fp8Gemm must not run from two host threads at once.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace qs::cuda {

struct Fp8GemmCall {
  int m = 0;                           // rows (tokens), 1 <= m <= max_m
  const uint8_t* x = nullptr;          // e4m3 [m][k], 16-byte aligned
  const float* sx = nullptr;           // FP32 [m] per-token scales
  const uint8_t* w = nullptr;          // e4m3 [n][k], 16-byte aligned
  const float* sw = nullptr;           // FP32 [n] per-channel scales
  const uint16_t* residual = nullptr;  // FP16 [m][n] or null; may alias y
  uint16_t* y = nullptr;               // FP16 [m][n]
};

class Fp8Gemm {
 public:
  // Plans W [n][k] x m <= max_m. Needs k % 16 == 0 and n % 8 == 0; throws qs::Error naming the problem (shape, or
  // no cuBLASLt algorithm for a bucket on this device). max_workspace: the most workspace an algorithm may use.
  Fp8Gemm(int n, int k, int max_m, size_t max_workspace = size_t(32) << 20);
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;

  int n() const { return n_; }
  int k() const { return k_; }
  int max_m() const { return max_m_; }
  // Device workspace bytes run() needs (the largest over the buckets; may be 0).
  size_t workspace_bytes() const { return workspace_bytes_; }
  // Launch only. `workspace` has workspace_bytes() bytes (may be shared by all Fp8Gemm run on one stream).
  Status run(const Fp8GemmCall& c, void* workspace, cudaStream_t stream);

 private:
  struct Impl;
  Impl* impl_ = nullptr;
  int n_ = 0, k_ = 0, max_m_ = 0;
  size_t workspace_bytes_ = 0;
};

}  // namespace qs::cuda
