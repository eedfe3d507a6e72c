// Small FP16 / FP32 kernels the GPU model runner (engine/cuda) needs around the big ones: embedding gather, the
// FP16 baseline's RMSNorm and SiLU*up (no quantization), a bias add, and
// device-side random fills for random-weight benchmarks (no host copy of a 35 GB model). Launch only (no
// allocation, no sync; CUDA-graph capturable). FP16 tensors are uint16_t bit patterns, row-major.
//
// Numerics: RMSNorm as kernels/norm_quant (sum of squares in fp32 per thread, fp32 tree reduction,
// r = rsqrt-free 1/sqrt(mean + eps), y = fp16((x * r) * w)); SiLU*up y = fp16(g / (1 + exp(-g)) * u) in fp32.
// Random fills are counter-based (splitmix64 of seed and element index): the same seed gives the same tensor on
// any GPU and launch shape.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"

namespace qs::kernels {

// out[r, :] = table[ids[r], :]  (FP16 [vocab, cols] -> FP16 [rows, cols]); ids outside [0, vocab) give zeros.
Status embedding_gather_f16(const int32_t* ids, int32_t rows, const uint16_t* table, int64_t vocab, int32_t cols,
                            uint16_t* out, cudaStream_t stream);

// out[r, :] = RMSNorm(x[src_row(r), :]) * weight, src_row(r) = row_index ? row_index[r] : r.
// x FP16 [*, cols], weight FP16 [cols], out FP16 [rows, cols] (must not alias x).
Status rmsnorm_f16(const uint16_t* x, const int32_t* row_index, int32_t rows, int32_t cols, const uint16_t* weight,
                   float eps, uint16_t* out, cudaStream_t stream);

// out[r, c] = silu(gate_up[r, c]) * gate_up[r, cols + c]; gate_up FP16 [rows, 2*cols], out FP16 [rows, cols].
Status silu_mul_f16(const uint16_t* gate_up, int32_t rows, int32_t cols, uint16_t* out, cudaStream_t stream);

// y[r, c] += bias[c] (FP16, rounded once).
Status add_bias_f16(uint16_t* y, const uint16_t* bias, int32_t rows, int32_t cols, cudaStream_t stream);

// x[i] = fp16(uniform(-amp, amp)) for i < n.
Status fill_uniform_f16(uint16_t* x, int64_t n, uint64_t seed, float amp, cudaStream_t stream);
// x[i] = fp16(value).
Status fill_const_f16(uint16_t* x, int64_t n, float value, cudaStream_t stream);
// Random bytes (any packed integer weight layout: repacked W4 nibbles, W8 bytes).
Status fill_random_bytes(void* x, int64_t nbytes, uint64_t seed, cudaStream_t stream);
// Random FP8 e4m3 codes, uniform over the finite ones (the NaN codes 0x7f / 0xff are remapped to 0x7e / 0xfe).
Status fill_random_e4m3(uint8_t* x, int64_t n, uint64_t seed, cudaStream_t stream);
// g128 level-2 words (s2 | zn << 8): s2 uniform in [1, 16], zn = -8 * s2 (zero point 8; q4 * s2 <= 240).
Status fill_random_s2zn(uint16_t* x, int64_t n, uint64_t seed, cudaStream_t stream);

// OK when this build has kernel images the current device can run (a clear error otherwise, e.g. an sm_80 GPU
// with an sm_90a-only build).
Status elementwise_probe();

}  // namespace qs::kernels
