// DType names/sizes and IEEE half conversions (see dtype.h).
#include "core/dtype.h"

#include <cmath>

namespace qs {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::I16: return "I16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::F64: return "F64";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

bool parse_dtype(std::string_view s, DType* out) {
  static const struct { const char* n; DType t; } kNames[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I8", DType::I8},
      {"U8", DType::U8},   {"I16", DType::I16}, {"I32", DType::I32},   {"I64", DType::I64},
      {"F64", DType::F64}, {"BOOL", DType::BOOL}};
  for (const auto& e : kNames)
    if (s == e.n) {
      *out = e.t;
      return true;
    }
  return false;
}

float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24
    float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t float_to_fp16(float f) {
  const uint32_t b = float_to_bits(f);
  const uint16_t sign = uint16_t((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // result is subnormal or zero: value / 2^-24 rounded half-even
    const float a = bits_to_float(abs);
    const float scaled = a * 16777216.0f;  // exact (power of two)
    const float r = std::nearbyint(scaled);  // default rounding mode: half to even
    return uint16_t(sign | uint16_t(r));
  }
  // normal: drop 13 mantissa bits with round half to even
  uint32_t m = abs + 0xfffu + ((abs >> 13) & 1u);
  m -= 0x38000000u;  // rebias exponent 127 -> 15
  return uint16_t(sign | uint16_t(m >> 13));
}

}  // namespace qs
