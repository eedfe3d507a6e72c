// FP8 e4m3 (the OCP "e4m3fn" format of Hopper's tensor cores: bias 7, no infinities, 0x7f/0xff NaN, largest
// finite 448) and the per-row quantizers of the FP8 baseline engine path, on the host: the bit-level reference
// that the CUDA kernels (norm_quant FP8 outputs, FP8 KV-cache write) reproduce exactly.
// Rounding rules:
//  * float -> e4m3 rounds to nearest even and saturates finite values to +-448 (PTX cvt.rn.satfinite.e4m3x2.f32,
//    cuda_fp8.h __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)); NaN -> 0x7f (sign kept); -0 -> 0x80;
//  * activations / weights (quantize_fp8_row): FP32 scale s = amax / 448 (IEEE fp32 division), q_k = e4m3(y_k / s)
//    (IEEE fp32 division); an all-zero row has s = 0 and q = 0. Dequantized value: e4m3_to_float(q_k) * s;
//  * KV cache (quantize_fp8_kv_row): the scale is stored in FP16, s_h = fp16(amax / 448), and the division uses
//    the stored scale: q_k = e4m3(y_k / float(s_h)) (as formats.h quantize_kv4_group divides by its stored scale).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace qs::fp8 {

constexpr float kE4m3Max = 448.0f;

inline float e4m3_to_float(uint8_t v) {
  const int e = (v >> 3) & 15, m = v & 7;
  float a;
  if (e == 15 && m == 7) a = NAN;
  else if (e == 0) a = std::ldexp(float(m), -9);
  else a = std::ldexp(float(8 + m), e - 10);
  return (v & 0x80) ? -a : a;
}

inline uint8_t float_to_e4m3(float x) {
  const uint8_t sign = (float_to_bits(x) >> 24) & 0x80;
  if (std::isnan(x)) return sign | 0x7f;
  const float a = std::fabs(x);
  if (a >= kE4m3Max) return sign | 0x7e;  // 448 (larger values would round to 480: not representable, saturate)
  if (a < 0x1p-6f) return sign | uint8_t(std::nearbyint(a * 512.0f));  // subnormal (8 steps of 2^-9; 8 = 2^-6)
  int e2;
  std::frexp(a, &e2);
  int e = e2 - 1;                                           // a in [2^e, 2^(e+1)), e in [-6, 8]
  int m = int(std::nearbyint(std::ldexp(a, 3 - e)));        // in [8, 16], exact scaling then RNE
  if (m == 16) m = 8, ++e;
  return sign | uint8_t(((e + 7) << 3) | (m - 8));
}

// Per-row FP8 quantization of n values (activations, weight rows): returns the FP32 scale (rules above).
inline float quantize_fp8_row(const float* y, int64_t n, uint8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(y[i]));
  const float s = amax / kE4m3Max;
  for (int64_t i = 0; i < n; ++i) q[i] = s > 0.0f ? float_to_e4m3(y[i] / s) : 0;
  return s;
}

// Per-token per-head FP8 quantization of one KV row: returns the FP16 scale bits (rules above).
inline uint16_t quantize_fp8_kv_row(const float* y, int64_t n, uint8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(y[i]));
  const uint16_t sh = float_to_fp16(amax / kE4m3Max);
  const float s = fp16_to_float(sh);
  for (int64_t i = 0; i < n; ++i) q[i] = s > 0.0f ? float_to_e4m3(y[i] / s) : 0;
  return sh;
}

}  // namespace qs::fp8
