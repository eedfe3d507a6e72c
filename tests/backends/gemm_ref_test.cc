// Tests of the exact reference GEMMs (backends/ref_cpu/gemm_w4a8): a hand-checked tiny case per variant, the g128
// byte-wraparound dequantization, and random problems against a double-precision matmul of the dequantized
// operands (the INT32 accumulators against an independent int64 dot product).
#include <algorithm>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "backends/ref_cpu/gemm_w4a8.h"
#include "backends/gemm_test_data.h"
#include "core/error.h"

namespace qs {
namespace {

using ::testing::HasSubstr;

TEST(GemmRef, PerChannelHandChecked) {
  // W (2 x 4 nibbles): row0 = [1, 2, 3, 4], row1 = [15, 0, 7, 8]; X (1 x 4) = [1, -2, 3, -4].
  const uint8_t q[] = {0x21, 0x43, 0x0f, 0x87};
  const uint16_t s[] = {float_to_fp16(0.5f), float_to_fp16(0.25f)};
  const uint16_t sz[] = {float_to_fp16(1.0f), float_to_fp16(0.0f)};
  const int8_t xq[] = {1, -2, 3, -4};
  const uint16_t sx[] = {float_to_fp16(2.0f)};
  const uint16_t xsum[] = {float_to_fp16(-4.0f)};  // 2 * (1 - 2 + 3 - 4)
  ref_cpu::QGemmWeights w{WeightFormat::kW4A8PerChannel, 2, 4, q, s, sz, nullptr, nullptr};
  ref_cpu::QGemmActs x{1, xq, sx, xsum};
  float y[2];
  int32_t acc[2];
  ref_cpu::qgemm(w, x, {}, y, acc);
  EXPECT_EQ(acc[0], 1 - 4 + 9 - 16);   // -10
  EXPECT_EQ(acc[1], 15 + 0 + 21 - 32);  // 4
  EXPECT_FLOAT_EQ(y[0], -10 * 0.5f * 2.0f - 1.0f * -4.0f);  // -6
  EXPECT_FLOAT_EQ(y[1], 4 * 0.25f * 2.0f);                  // 2
  // Bias and residual are added last.
  const uint16_t bias[] = {float_to_fp16(0.5f), float_to_fp16(-1.0f)};
  const uint16_t res[] = {float_to_fp16(3.0f), float_to_fp16(0.25f)};
  ref_cpu::qgemm(w, x, {bias, res}, y);
  EXPECT_FLOAT_EQ(y[0], -6.0f + 0.5f + 3.0f);
  EXPECT_FLOAT_EQ(y[1], 2.0f - 1.0f + 0.25f);
}

TEST(GemmRef, G128DequantWrapsLikeTheGpu) {
  // q4 = 15, s2 = 16, zn = -128: 240 + 128 = 368 = 112 mod 256 -> 112 = (15 - 8) * 16.
  EXPECT_EQ(fmt4::dequant_w4_g128_to_int8(15, 16, -128), 112);
  EXPECT_EQ(fmt4::dequant_w4_g128_to_int8(0, 16, -128), -128);
  EXPECT_EQ(fmt4::dequant_w4_g128_to_int8(9, 16, -128), 16);
  // One row of K = 128: all nibbles 9 with s2 = 16, zn = -128 -> w8 = 16 everywhere; x = 1 -> acc = 2048.
  std::vector<uint8_t> q(64, 0x99);
  const uint16_t s1[] = {float_to_fp16(0.125f)};
  const uint8_t s2[] = {16};
  const int8_t zn[] = {-128};
  std::vector<int8_t> xq(128, 1);
  const uint16_t sx[] = {float_to_fp16(0.5f)};
  ref_cpu::QGemmWeights w{WeightFormat::kW4A8G128, 1, 128, q.data(), s1, nullptr, s2, zn};
  float y;
  int32_t acc;
  ref_cpu::qgemm(w, {1, xq.data(), sx, nullptr}, {}, &y, &acc);
  EXPECT_EQ(acc, 2048);
  EXPECT_FLOAT_EQ(y, 2048 * 0.125f * 0.5f);
}

TEST(GemmRef, W8A8HandChecked) {
  const int8_t wq[] = {-127, 5, 100, -3};  // 2 x 2
  const uint16_t sw[] = {float_to_fp16(0.5f), float_to_fp16(2.0f)};
  const int8_t xq[] = {3, -7};
  const uint16_t sx[] = {float_to_fp16(0.25f)};
  ref_cpu::QGemmWeights w{WeightFormat::kW8A8, 2, 2, reinterpret_cast<const uint8_t*>(wq), sw, nullptr, nullptr,
                          nullptr};
  float y[2];
  int32_t acc[2];
  ref_cpu::qgemm(w, {1, xq, sx, nullptr}, {}, y, acc);
  EXPECT_EQ(acc[0], -381 - 35);
  EXPECT_EQ(acc[1], 300 + 21);
  EXPECT_FLOAT_EQ(y[0], -416 * 0.5f * 0.25f);
  EXPECT_FLOAT_EQ(y[1], 321 * 2.0f * 0.25f);
}

class GemmRefRandom : public ::testing::TestWithParam<WeightFormat> {};

TEST_P(GemmRefRandom, MatchesDoubleMatmulOfDequantizedOperands) {
  for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 16, 128}, {3, 40, 256}, {17, 33, 384}}) {
    SCOPED_TRACE(testing::Message() << "m=" << m << " n=" << n << " k=" << k);
    const auto p = test::make_qgemm_problem(GetParam(), m, n, k, 1234 + m, true, true);
    const auto w = p.weights();
    std::vector<float> y(size_t(m * n));
    std::vector<int32_t> acc(size_t(m * n));
    ref_cpu::qgemm(w, p.acts(), p.epilogue(), y.data(), acc.data());
    std::vector<float> wd(size_t(n * k));
    ref_cpu::dequantize_weights(w, wd.data());
    for (int64_t i = 0; i < m; ++i) {
      const double sx = fp16_to_float(p.sx[size_t(i)]);
      for (int64_t j = 0; j < n; ++j) {
        int64_t a = 0;
        double d = 0, mag = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
          a += int64_t(p.xq[size_t(i * k + kk)]) * ref_cpu::qgemm_int_weight(w, j, kk);
          const double t = double(p.xq[size_t(i * k + kk)]) * sx * double(wd[size_t(j * k + kk)]);
          d += t;
          mag += std::fabs(t);
        }
        ASSERT_EQ(acc[size_t(i * n + j)], a);
        d += fp16_to_float(p.bias[size_t(j)]) + fp16_to_float(p.residual[size_t(i * n + j)]);
        // Per-channel: the reference removes the zero through the FP16-rounded xsum (relative error 2^-11 of
        // sz*|xsum|), and dequantize_weights rounds q*s - sz to fp32; the rest is fp32 rounding (~1e-6 rel).
        double tol = 1e-5 * (mag + std::fabs(d)) + 1e-5;
        if (GetParam() == WeightFormat::kW4A8PerChannel)
          tol += std::fabs(fp16_to_float(p.szero[size_t(j)]) * fp16_to_float(p.xsum[size_t(i)])) * std::ldexp(1.0, -11);
        ASSERT_NEAR(y[size_t(i * n + j)], d, tol) << "at (" << i << ", " << j << ")";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllVariants, GemmRefRandom,
                         ::testing::Values(WeightFormat::kW4A8PerChannel, WeightFormat::kW4A8G128,
                                           WeightFormat::kW8A8),
                         [](const auto& info) {
                           std::string s = weight_format_name(info.param);
                           std::replace(s.begin(), s.end(), '-', '_');  // gtest names: [A-Za-z0-9_]
                           return s;
                         });

TEST(GemmRef, RejectsBadInput) {
  const auto p = test::make_qgemm_problem(WeightFormat::kW4A8G128, 2, 8, 128, 7);
  auto w = p.weights();
  float y[16];
  w.k = 64;
  try {
    ref_cpu::qgemm(w, p.acts(), {}, y);
    FAIL() << "no error for K=64 in g128";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("multiple of the group size"));
  }
  auto pc = test::make_qgemm_problem(WeightFormat::kW4A8PerChannel, 2, 8, 128, 7);
  auto x = pc.acts();
  x.sum = nullptr;
  EXPECT_THAT([&] { ref_cpu::qgemm(pc.weights(), x, {}, y); },
              ::testing::ThrowsMessage<Error>(HasSubstr("activation sums (xsum) missing")));
  EXPECT_THAT([&] { ref_cpu::qgemm(pc.weights(), pc.acts(), {}, nullptr); },
              ::testing::ThrowsMessage<Error>(HasSubstr("no output")));
}

}  // namespace
}  // namespace qs
