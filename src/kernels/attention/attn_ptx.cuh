// Device helpers of the attention and KV-cache kernels on top of the common PTX wrappers (common/mma.h, pulled into
// this namespace): the lop3 + 0x6400 magic-number 4-bit -> fp16 conversion, half2 bit casts, byte permutes and
// quad (4-lane) reductions of the mma C fragments, the flush-to-zero 2^x of the softmaxes.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/common/mma.h"

namespace qs::kernels::attn {

using namespace qs::kernels::ptx;

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) { return __byte_perm(a, b, sel); }

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// Nibbles p (bits 4p..4p+3) and p+4 (bits 16+4p..) of w as exact half2 (low, high) values 0..15:
// lop3 builds 0x6400 | n = 1024 + n, one hsub2 removes the 1024.
__device__ __forceinline__ __half2 nibbles_to_h2(uint32_t w, int p) {
  const uint32_t x = lop3_and_or(w >> (4 * p), 0x000f000fu, 0x64006400u);
  return __hsub2(bits_h2(x), bits_h2(0x64006400u));
}

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) { return h2_bits(__floats2half2_rn(lo, hi)); }

// 2^x on the special-function unit, denormal results flushed to zero (softmax weights are rounded to fp16 or
// summed with ones near 1, so nothing below 2^-126 matters): one MUFU.EX2 instead of exp2f's denormal-safe sequence.
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace qs::kernels::attn
