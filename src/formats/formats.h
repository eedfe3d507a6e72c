// W4A8KV4 number formats: the canonical layouts and the scalar, bit-level reference of every run-time
// quantization and dequantization step. The CPU reference backend, the CUDA kernels and their tests all follow
// this file; change it only together with them. Offline weight quantizers (choosing scales, zeros, the
// protective range, GPTQ) live in quant/ too but build on these definitions.
//
// Rounding rules (chosen so a GPU kernel can reproduce them bit for bit):
//  * all scale/zero arithmetic is IEEE fp32 (no fast-math; on the GPU '/' is IEEE division);
//  * float -> integer uses round-half-to-even (std::nearbyint in the default mode == __float2int_rn);
//  * stored scales and zeros are FP16 (round to nearest even), and quantization divides by the *stored*
//    (FP16-rounded) scale so that dequantization inverts exactly what was rounded.
//
// Canonical packed 4-bit layout (weights and KV): two values per byte, element 2j in the low nibble and
// element 2j+1 in the high nibble, rows contiguous. A backend may repack at load time (tested bit-exactly).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace qs::fmt4 {

inline int round_even(float x) { return int(std::nearbyint(x)); }

inline uint8_t get_nibble(const uint8_t* packed, int64_t i) {
  const uint8_t b = packed[i >> 1];
  return (i & 1) ? uint8_t(b >> 4) : uint8_t(b & 0xf);
}
inline void set_nibble(uint8_t* packed, int64_t i, uint8_t v) {
  uint8_t& b = packed[i >> 1];
  b = (i & 1) ? uint8_t((b & 0x0f) | (v << 4)) : uint8_t((b & 0xf0) | (v & 0xf));
}

// ---------------------------------------------------------------------------------------------------------
// Activations: INT8, symmetric, per token (row of K values).
//   amax = max_k |x_k|;  s = fp16(amax / 127);  q_k = clamp(rne(x_k / float(s)), -127, 127)
//   (s == 0 -> all q = 0). Dequantized: q_k * float(s).
// Per-channel W4A8 also needs the token's activation sum, defined on the quantized values so that the
// GEMM equals dequant(W) x dequant(X) up to FP rounding: xsum = fp16(float(s) * sum_k q_k).
// g128 W4A8 on Hopper needs the exact integer sum qsum = sum_k q_k: its wgmma takes the weights as unsigned bytes
// w8 + 128 and removes 128 * qsum from the INT32 accumulator (kernels/gemm_w4a8/qgemm_sm90.cuh).
struct ActQuantRow {
  uint16_t scale;  // FP16 bits
  uint16_t sum;    // FP16 bits (per-channel W4A8 only)
  int32_t qsum;    // sum_k q_k (g128 W4A8)
};
inline ActQuantRow quantize_act_row(const float* x, int64_t k, int8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  const uint16_t s_h = float_to_fp16(amax / 127.0f);
  const float s = fp16_to_float(s_h);
  int32_t sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    const int v = s > 0.0f ? std::clamp(round_even(x[i] / s), -127, 127) : 0;
    q[i] = int8_t(v);
    sum += v;
  }
  return {s_h, float_to_fp16(s * float(sum)), sum};
}

// ---------------------------------------------------------------------------------------------------------
// KV cache: UINT4, asymmetric, per token and per KV head (group = head_dim values), applied after RoPE.
//   mn, mx = min/max;  s = max((mx - mn) / 15, max(|mn|, |mx|) / 32768, 2^-14)   (the floor keeps the zero
//   within FP16 range and the scale a normal FP16 for constant or near-constant groups)
//   scale = fp16(s);  zero = fp16(-mn / float(scale))    (real-valued, in the quantized domain)
//   q = clamp(rne(x / float(scale) + float(zero)), 0, 15)
// Dequantized: (q - float(zero)) * float(scale); a kernel may compute it as fma(q, scale, -zero*scale).
struct Kv4Params {
  uint16_t scale;  // FP16 bits
  uint16_t zero;   // FP16 bits
};
inline Kv4Params quantize_kv4_group(const float* x, int64_t n, uint8_t* packed /* n/2 bytes */) {
  float mn = x[0], mx = x[0];
  for (int64_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  float s = (mx - mn) / 15.0f;
  s = std::max(s, std::max(std::fabs(mn), std::fabs(mx)) / 32768.0f);
  s = std::max(s, 6.103515625e-05f);  // 2^-14
  const uint16_t s_h = float_to_fp16(s);
  const float sr = fp16_to_float(s_h);
  const uint16_t z_h = float_to_fp16(-mn / sr);
  const float zr = fp16_to_float(z_h);
  for (int64_t i = 0; i < n; ++i) set_nibble(packed, i, uint8_t(std::clamp(round_even(x[i] / sr + zr), 0, 15)));
  return {s_h, z_h};
}
inline float dequantize_kv4(uint8_t q, Kv4Params p) {
  return (float(q) - fp16_to_float(p.zero)) * fp16_to_float(p.scale);
}

// ---------------------------------------------------------------------------------------------------------
// Weights, per-channel variant: W[N,K] -> UINT4 q (packed [N, K/2]), FP16 scale s[N], FP16 scaled zero
// sz[N] = fp16(z * s) with integer z in 0..15.   Dequantized: w = q * float(s) - float(sz).
// GEMM (exact integer part): acc[m,n] = sum_k qx[m,k] * q[n,k]  (INT32, raw nibbles 0..15)
//   y[m,n] = acc * float(s[n]) * float(sx[m]) - float(sz[n]) * float(xsum[m])
inline float dequant_w4_per_channel(uint8_t q, uint16_t s, uint16_t sz) {
  return float(q) * fp16_to_float(s) - fp16_to_float(sz);
}

// Weights, progressive g128 variant: level 1 INT8 per output channel (FP16 scale s1[N], values within the
// protective range), level 2 UINT4 per group of 128 input channels with an unsigned 8-bit integer scale
// s2[N, K/128] and the negated scaled zero zn[N, K/128] = -(z * s2) (an INT8 in [-128, 0]).
// Run-time dequantization to INT8 ("subtraction after multiplication"), exactly as the GPU does it with one
// 32-bit multiply and one byte-wise add that wraps modulo 256:
//   w8 = int8( uint8(q4 * s2) + uint8(zn) )   (mod 256; the protective range guarantees no real overflow)
// GEMM: acc[m,n] = sum_k qx[m,k] * w8[n,k] (INT32);  y[m,n] = acc * float(s1[n]) * float(sx[m]).
inline int8_t dequant_w4_g128_to_int8(uint8_t q4, uint8_t s2, int8_t zn) {
  return int8_t(uint8_t(uint8_t(q4 * s2) + uint8_t(zn)));
}
constexpr int kGroupSize = 128;
// Largest protective range P of the progressive g128 format (level-1 INT8 values within [-P, P]) for which no
// producible q4 overflows INT8 when dequantized (tests/quant/protective_range_test.cc, exhaustive; the paper's
// value, re-derived). Readers reject checkpoints that claim a larger one.
constexpr int kProtectiveRange = 119;

}  // namespace qs::fmt4
