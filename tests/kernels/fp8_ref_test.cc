// FP8 e4m3 host reference (formats/fp8.h) and the FP8 references built on it: every code round-trips; float ->
// e4m3 equals a brute-force nearest-code search with ties to the even code and saturation at 448; the per-row
// quantizers put the row's amax on +-448, keep every value within half a step, and turn a zero row into zeros;
// ref_cpu::quantize_fp8_weights / fp8_gemm agree with an independent FP64 evaluation of the dequantized operands.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backends/ref_cpu/fp8_gemm.h"
#include "common/test_util.h"
#include "core/dtype.h"
#include "formats/fp8.h"

namespace qs {
namespace {

using fp8::e4m3_to_float;
using fp8::float_to_e4m3;

TEST(Fp8Format, EveryCodeRoundTrips) {
  for (int v = 0; v < 256; ++v) {
    if ((v & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3_to_float(uint8_t(v))));
      continue;
    }
    EXPECT_EQ(float_to_e4m3(e4m3_to_float(uint8_t(v))), v) << "code " << v;
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), 0x1p-9f);
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
}

TEST(Fp8Format, KnownRoundings) {
  EXPECT_EQ(float_to_e4m3(448.0f), 0x7e);
  EXPECT_EQ(float_to_e4m3(464.0f), 0x7e);  // midpoint to 480 (not representable): saturates
  EXPECT_EQ(float_to_e4m3(1e9f), 0x7e);
  EXPECT_EQ(float_to_e4m3(-1e9f), 0xfe);
  EXPECT_EQ(float_to_e4m3(INFINITY), 0x7e);
  EXPECT_EQ(float_to_e4m3(NAN) & 0x7f, 0x7f);
  EXPECT_EQ(float_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(float_to_e4m3(0x1p-10f), 0x00);       // half of the smallest subnormal: tie to even (0)
  EXPECT_EQ(float_to_e4m3(3 * 0x1p-10f), 0x02);   // 1.5 steps: tie to even (2)
  EXPECT_EQ(float_to_e4m3(1.0625f), 0x38);        // between 1 and 1.125: to even (1.0)
  EXPECT_EQ(float_to_e4m3(1.1875f), 0x3a);        // between 1.125 and 1.25: to even (1.25)
  EXPECT_EQ(float_to_e4m3(15.5f * 0x1p-10f), 0x08);  // rounds up from the subnormals into 2^-6
}

TEST(Fp8Format, MatchesBruteForceNearest) {
  std::mt19937_64 g(5);
  std::uniform_real_distribution<float> e(-14.0f, 10.0f);
  for (int it = 0; it < 200000; ++it) {
    const float a = std::exp2(e(g)) * ((g() & 1) ? -1.0f : 1.0f);
    // Nearest finite code by search; ties to the even code; beyond 448 saturate.
    int best = -1;
    double bd = 1e300;
    for (int v = 0; v < 256; ++v) {
      if ((v & 0x7f) == 0x7f || ((v & 0x80) != 0) != std::signbit(a)) continue;
      const double d = std::fabs(double(e4m3_to_float(uint8_t(v))) - double(a));
      if (d < bd || (d == bd && (v & 1) == 0)) bd = d, best = v;
    }
    if (std::fabs(a) >= 448.0f) best = std::signbit(a) ? 0xfe : 0x7e;
    ASSERT_EQ(float_to_e4m3(a), best) << "a = " << a;
  }
}

TEST(Fp8Quant, RowQuantizersBoundTheError) {
  for (int n : {1, 3, 67, 4096}) {
    auto y = test::random_normal(size_t(n), uint64_t(n), 3.0f);
    std::vector<uint8_t> q(static_cast<size_t>(n));
    const float s = fp8::quantize_fp8_row(y.data(), n, q.data());
    float amax = 0;
    for (float v : y) amax = std::max(amax, std::fabs(v));
    EXPECT_EQ(s, amax / 448.0f);
    for (int i = 0; i < n; ++i) {
      const float d = e4m3_to_float(q[size_t(i)]) * s;
      // Half a step: 2^-4 relative for normals, 2^-10 * s absolute in the subnormal range.
      EXPECT_LE(std::fabs(d - y[size_t(i)]), std::max(std::fabs(y[size_t(i)]) * 0x1p-4f, s * 0x1p-10f) * 1.0001f);
      if (std::fabs(y[size_t(i)]) == amax) EXPECT_EQ(q[size_t(i)] & 0x7f, 0x7e);
    }
    const uint16_t sh = fp8::quantize_fp8_kv_row(y.data(), n, q.data());
    EXPECT_EQ(sh, float_to_fp16(amax / 448.0f));
    for (int i = 0; i < n; ++i)
      EXPECT_EQ(q[size_t(i)], float_to_e4m3(y[size_t(i)] / fp16_to_float(sh))) << i;
  }
  std::vector<float> z(8, 0.0f);
  std::vector<uint8_t> q(8, 0x55);
  EXPECT_EQ(fp8::quantize_fp8_row(z.data(), 8, q.data()), 0.0f);
  for (uint8_t v : q) EXPECT_EQ(v, 0);
}

TEST(Fp8Quant, ReferenceGemmIsTheDequantizedProduct) {
  const int m = 5, n = 24, k = 48;
  const auto wf = test::random_normal(size_t(n) * k, 1, 0.1f);
  const auto xf = test::random_normal(size_t(m) * k, 2, 2.0f);
  const ref_cpu::Fp8Weights w = ref_cpu::quantize_fp8_weights(wf.data(), n, k);
  std::vector<uint8_t> xq(size_t(m) * k);
  std::vector<float> sx(static_cast<size_t>(m));
  for (int r = 0; r < m; ++r) sx[size_t(r)] = fp8::quantize_fp8_row(xf.data() + r * k, k, xq.data() + r * k);
  std::vector<uint16_t> res(size_t(m) * n);
  for (size_t i = 0; i < res.size(); ++i) res[i] = float_to_fp16(float(i % 7) - 3.0f);
  std::vector<float> y(size_t(m) * n), yf(size_t(m) * n);
  ref_cpu::fp8_gemm(xq.data(), sx.data(), m, w, res.data(), y.data());
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c) {
      double acc = 0, accf = 0;
      for (int j = 0; j < k; ++j) {
        acc += double(e4m3_to_float(xq[size_t(r * k + j)]) * sx[size_t(r)]) *
               double(e4m3_to_float(w.q[size_t(c * k + j)]) * w.scale[size_t(c)]);
        accf += double(xf[size_t(r * k + j)]) * double(wf[size_t(c * k + j)]);
      }
      const double rv = fp16_to_float(res[size_t(r * n + c)]);
      EXPECT_NEAR(y[size_t(r * n + c)], acc + rv, 1e-5 * (std::fabs(acc) + 1.0));
      yf[size_t(r * n + c)] = float(accf + rv);
    }
  // And FP8 on both operands stays close to the unquantized product (~2^-5 relative per operand).
  EXPECT_LT(test::normalized_error(y, yf), 0.05);
}

}  // namespace
}  // namespace qs
