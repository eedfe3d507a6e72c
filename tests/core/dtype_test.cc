// FP16/BF16 conversions: exhaustive round trips and round-half-even at the boundaries.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"

namespace qs {
namespace {

TEST(DType, Fp16RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t b = uint16_t(h);
    const float f = fp16_to_float(b);
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_fp16(f), b) << "bits " << h;
  }
}

TEST(DType, Fp16RoundsHalfToEven) {
  // 1 + 2^-11 lies exactly between 1 and the next half (1 + 2^-10): ties to the even mantissa (1.0).
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3*2^-11 lies between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
  EXPECT_EQ(float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // half of the smallest subnormal: ties to 0
  EXPECT_EQ(float_to_fp16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (uint32_t h = 0; h < 0x10000; h += 7) {
    const float f = bf16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_bf16(f), uint16_t(h));
  }
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
}

TEST(DType, ParseNames) {
  DType t;
  EXPECT_TRUE(parse_dtype("BF16", &t));
  EXPECT_EQ(t, DType::BF16);
  EXPECT_FALSE(parse_dtype("F8_E4M3X", &t));
  EXPECT_EQ(dtype_size(DType::I64), 8u);
}

}  // namespace
}  // namespace qs
