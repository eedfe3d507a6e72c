// Element types used across qserve and the host-side conversions between FP16/BF16 and float.
// Conversions round to nearest even (the IEEE default and what the GPU's __float2half_rn does), handle
// subnormals, infinities and NaN, so host references match device results bit for bit.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace qs {

enum class DType : uint8_t { F32, F16, BF16, I8, U8, I16, I32, I64, F64, BOOL };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
// Parses a safetensors dtype string; returns false for an unknown one.
bool parse_dtype(std::string_view s, DType* out);

// ---- half / bfloat16 bit conversions (host) ----
inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }
inline uint16_t float_to_bf16(float f) {
  uint32_t b = float_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);  // quiet NaN
  b += 0x7fffu + ((b >> 16) & 1u);                                         // round half to even
  return uint16_t(b >> 16);
}

float fp16_to_float(uint16_t h);
uint16_t float_to_fp16(float f);  // round to nearest even, saturates to inf like __float2half_rn

// Rounds a float to the nearest FP16 value (and back): the value a device FP16 store would hold.
inline float round_fp16(float f) { return fp16_to_float(float_to_fp16(f)); }
inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace qs
