// Offline weight quantizers for the W4A8 (and W8A8) linears: pure functions on FP32 [N, K] row-major weights
// (N output channels, K input channels) that return the packed data and scales in the canonical layouts of
// formats/formats.h plus the quantizer's own dequantized reference (F32 [N, K]). The element-level rules are
// exposed separately (params + quantize-one-value) so GPTQ's rounding step uses exactly the same arithmetic.
// Every rounding decision is written down in docs/QUANTIZATION.md:
//  * per-channel W4: the range always contains 0 (min <= 0 <= max, so the integer zero lies in 0..15), an
//    optional clip ratio shrinks it, s = fp16((max - min) / 15), z = rne(-min / s), sz = fp16(z * s), and
//    q = clamp(rne((w + sz) / s), 0, 15) so that q * s - sz (the format's dequantization) is the nearest level;
//  * progressive g128: level 1 q8 = clamp(rne(w / s1), -P, P) with s1 = fp16(absmax / P); level 2 per group of
//    128 on the integers: [lo, hi] = [min(min q8, 0), max(max q8, 0)], s2 = max(1, rne((hi - lo) / 15)),
//    z = clamp(rne(-lo / s2), 0, 15), q4 = clamp(rne(clamp(q8, lo, hi) / s2) + z, 0, 15), zn = -(z * s2);
//    P = kProtectiveRange = 119 is the largest range for which no producible q4 overflows (exhaustive test);
//  * INT8 per-channel (W8A8): s = fp16(absmax / 127), q = clamp(rne(w / s), -127, 127).
// A zero scale (all-zero row or group) quantizes everything to the zero point; dequantization gives 0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "formats/formats.h"

namespace qs::quant {

using fmt4::kProtectiveRange;  // defined with the format (formats/formats.h)

// ---------------------------------------------------------------------------------------------------------
// Element-level rules.

// Per-channel W4 parameters of one output channel.
struct W4ChannelParams {
  uint16_t scale = 0;  // FP16 bits
  uint16_t szero = 0;  // FP16 bits: fp16(zero * scale)
  int zero = 0;        // integer zero point, 0..15
};
// Parameters for one row of k weights; clip_ratio in (0, 1] shrinks the range [min(min,0), max(max,0)].
W4ChannelParams w4_channel_params(const float* row, int64_t k, float clip_ratio = 1.0f);
inline uint8_t w4_channel_quantize(float w, const W4ChannelParams& p) {
  const float s = fp16_to_float(p.scale);
  if (!(s > 0.0f)) return uint8_t(p.zero);
  return uint8_t(std::clamp(fmt4::round_even((w + fp16_to_float(p.szero)) / s), 0, 15));
}
inline float w4_channel_dequant(uint8_t q, const W4ChannelParams& p) {
  return fmt4::dequant_w4_per_channel(q, p.scale, p.szero);
}

// Progressive g128, level 1 (per output channel): s1 = fp16(absmax / P); q8 = clamp(rne(w / s1), -P, P).
uint16_t g128_level1_scale(const float* row, int64_t k, int protective_range);
inline int g128_level1_quantize(float w, float s1, int protective_range) {
  if (!(s1 > 0.0f)) return 0;
  return std::clamp(fmt4::round_even(w / s1), -protective_range, protective_range);
}

// Progressive g128, level 2 (per group of 128 level-1 integers).
struct G128GroupParams {
  uint8_t s2 = 1;  // integer scale, >= 1
  int8_t zn = 0;   // -(zero * s2), in [-128, 0]
  int zero = 0;    // 0..15
  int lo = 0;      // the group's integer range [lo, hi] (contains 0); level-1 values are clamped into it
  int hi = 0;
};
// From the group's integer range: mn/mx are min/max of the level-1 values (0 is added to the range).
G128GroupParams g128_group_params(int mn, int mx);
inline uint8_t g128_quantize(int q8, const G128GroupParams& g) {
  const int v = std::clamp(q8, g.lo, g.hi);
  return uint8_t(std::clamp(fmt4::round_even(float(v) / float(g.s2)) + g.zero, 0, 15));
}
// The INT8 value the GPU reconstructs (formats.h: multiply, then byte-wise add of zn, mod 256).
inline int8_t g128_dequant_int8(uint8_t q4, const G128GroupParams& g) {
  return fmt4::dequant_w4_g128_to_int8(q4, g.s2, g.zn);
}

// ---------------------------------------------------------------------------------------------------------
// Whole-matrix quantizers. Input: F32 [N, K] row-major. K must be even (4-bit packing), and a multiple of 128
// for g128. Each result carries the quantizer's own dequantized reference `dequant` (F32 [N, K]).

struct W4PerChannelWeight {
  Tensor qweight;  // U8 [N, K/2], canonical packing (element 2j low nibble, 2j+1 high nibble)
  Tensor scale;    // F16 [N]
  Tensor szero;    // F16 [N], fp16(z * s)
  Tensor dequant;  // F32 [N, K]: q * s - sz
};
struct W4G128Weight {
  Tensor qweight;  // U8 [N, K/2], canonical packing
  Tensor s1;       // F16 [N], level-1 scale
  Tensor s2;       // U8 [N, K/128], level-2 integer scale
  Tensor zn;       // I8 [N, K/128], -(z * s2)
  Tensor dequant;  // F32 [N, K]: float(int8 dequant) * s1
  int protective_range = kProtectiveRange;
};
struct Int8ChannelWeight {
  Tensor qweight;  // I8 [N, K]
  Tensor scale;    // F16 [N]
  Tensor dequant;  // F32 [N, K]: q * s
};

// clip_ratios: empty (no clipping) or N ratios in (0, 1].
W4PerChannelWeight quantize_w4_per_channel(const Tensor& w, const std::vector<float>& clip_ratios = {});
W4G128Weight quantize_w4_g128(const Tensor& w, int protective_range = kProtectiveRange);
Int8ChannelWeight quantize_int8_per_channel(const Tensor& w);

// Dequantization from the stored (packed) form alone, through formats.h: F32 [N, K].
Tensor dequantize(const W4PerChannelWeight& q);
Tensor dequantize(const W4G128Weight& q);
Tensor dequantize(const Int8ChannelWeight& q);

// ---------------------------------------------------------------------------------------------------------
// 4-bit packing in the canonical layout. codes: n*k values 0..15 (row-major); k must be even.
Tensor pack_u4(const uint8_t* codes, int64_t n, int64_t k);  // -> U8 [n, k/2]
std::vector<uint8_t> unpack_u4(const Tensor& packed);        // U8 [n, k/2] -> n*k codes

// Validates a weight argument (F32, 2-D, even K, finite) and names it in errors.
void check_weight(const Tensor& w, const char* what);

}  // namespace qs::quant
