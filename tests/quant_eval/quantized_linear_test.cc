// Tests of the quantized linear layers (model/quantized/quantized_linear.h): W4A8 per-channel, W4A8 g128 and
// W8A8 equal an FP matmul of the dequantized activations and the quantizer's dequantized weights, within a bound
// derived from the arithmetic; the weight-only mode equals the FP32 reference linear on the dequantized weights
// bit for bit; the FP16 lm_head rounds its weights; bad tensors are rejected with messages naming them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backends/ref_cpu/ops.h"
#include "common/test_util.h"
#include "model/quantized/quantized_linear.h"
#include "quant/weight_quant.h"

namespace qs {
namespace {

using model::ActMode;
using model::QuantizedLinear;
using model::QuantizedWeights;
using ::testing::HasSubstr;

// Random weights with a few large rows/columns so ranges differ between channels and groups.
Tensor random_weight(int64_t n, int64_t k, uint64_t seed) {
  std::vector<float> w = test::random_normal(size_t(n * k), seed, 0.05f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j)
      if (j % 37 == 5 || i % 11 == 3) w[size_t(i * k + j)] *= 6.0f;
  return Tensor::from_floats({n, k}, w.data());
}

struct Built {
  QuantizedWeights w;
  Tensor dequant;  // the quantizer's own dequantized reference, F32 [N, K]
};

Built build(WeightFormat v, const Tensor& w) {
  Built b;
  b.w.variant = v;
  if (v == WeightFormat::kW4A8PerChannel) {
    auto q = quant::quantize_w4_per_channel(w);
    b.w.qweight = q.qweight;
    b.w.scale = q.scale;
    b.w.szero = q.szero;
    b.dequant = q.dequant;
  } else if (v == WeightFormat::kW4A8G128) {
    auto q = quant::quantize_w4_g128(w);
    b.w.qweight = q.qweight;
    b.w.scale = q.s1;
    b.w.s2 = q.s2;
    b.w.zn = q.zn;
    b.dequant = q.dequant;
  } else {
    auto q = quant::quantize_int8_per_channel(w);
    b.w.qweight = q.qweight;
    b.w.scale = q.scale;
    b.dequant = q.dequant;
  }
  return b;
}

struct Case {
  WeightFormat variant;
  int64_t m, n, k;
};

class QuantizedLinearTest : public ::testing::TestWithParam<Case> {};

// y must equal sum_k deq(x)[m,k] * deq(W)[n,k] (double). The integer part is exact; what remains is the FP32
// epilogue (a few roundings of ~2^-24 relative each on terms bounded by sum_k |x_k| (|q_k s| + |sz|)), the FP32
// rounding of each dequantized weight (2^-24 relative, same magnitude), and for per-channel the format's FP16
// activation sum xsum = fp16(sx * sum q): the zero correction sz * xsum carries half an FP16 ulp, 2^-11 relative.
TEST_P(QuantizedLinearTest, EqualsFpMatmulOnDequantizedOperands) {
  const Case c = GetParam();
  const Tensor w = random_weight(c.n, c.k, 1000 + uint64_t(c.n * 7 + c.k));
  Built b = build(c.variant, w);
  // A bias exercises the epilogue (FP16, as the device kernel takes it).
  std::vector<uint16_t> bias(size_t(c.n));
  for (int64_t i = 0; i < c.n; ++i) bias[size_t(i)] = float_to_fp16(0.01f * float(i % 13) - 0.05f);
  b.w.bias = Tensor(DType::F16, {c.n});
  std::copy(bias.begin(), bias.end(), b.w.bias.data<uint16_t>());
  const QuantizedLinear lin(b.w, ActMode::kInt8, backends::ref_cpu_backend(), "test");
  ASSERT_EQ(lin.in, c.k);
  ASSERT_EQ(lin.out, c.n);

  std::vector<float> x = test::random_normal(size_t(c.m * c.k), 77 + uint64_t(c.m));
  for (int64_t i = 0; i < c.m; ++i) x[size_t(i * c.k + (i % c.k))] *= 20.0f;  // an outlier per token
  std::vector<float> y(size_t(c.m * c.n), NAN);
  lin.forward(x.data(), c.m, y.data());

  const model::QuantizedActs a = model::quantize_acts(x.data(), c.m, c.k);
  const float* dw = b.dequant.data<float>();
  const bool pc = c.variant == WeightFormat::kW4A8PerChannel;
  int64_t nonzero = 0;
  for (int64_t i = 0; i < c.m; ++i) {
    const double sx = fp16_to_float(a.scale[size_t(i)]);
    int64_t qsum = 0;
    for (int64_t j = 0; j < c.k; ++j) qsum += a.q[size_t(i * c.k + j)];
    for (int64_t o = 0; o < c.n; ++o) {
      const double sz = pc ? fp16_to_float(b.w.szero.data<uint16_t>()[o]) : 0.0;
      double ref = fp16_to_float(bias[size_t(o)]), mag = std::fabs(ref);
      for (int64_t j = 0; j < c.k; ++j) {
        const double xv = double(a.q[size_t(i * c.k + j)]) * sx;
        ref += xv * double(dw[o * c.k + j]);
        mag += std::fabs(xv) * (std::fabs(double(dw[o * c.k + j])) + 2 * sz);
      }
      double tol = 8 * std::ldexp(1.0, -24) * mag;
      if (pc) tol += std::ldexp(1.0, -11) * sz * std::fabs(sx * double(qsum));
      const float got = y[size_t(i * c.n + o)];
      ASSERT_TRUE(std::isfinite(got)) << "row " << i << " col " << o;
      ASSERT_LE(std::fabs(double(got) - ref), tol) << "row " << i << " col " << o << " ref " << ref;
      nonzero += got != 0.0f;
    }
  }
  EXPECT_GT(nonzero, c.m * c.n * 9 / 10);
  // And the dequantized activations are within half a step of the inputs (quantize_act_row's contract).
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.k; ++j)
      ASSERT_LE(std::fabs(a.q[size_t(i * c.k + j)] * fp16_to_float(a.scale[size_t(i)]) - x[size_t(i * c.k + j)]),
                0.5f * fp16_to_float(a.scale[size_t(i)]) * 1.001f + 1e-7f);
}

// Batched == one token at a time, bit for bit (Linear's contract).
TEST_P(QuantizedLinearTest, RowsAreIndependent) {
  const Case c = GetParam();
  const Built b = build(c.variant, random_weight(c.n, c.k, 5));
  const QuantizedLinear lin(b.w, ActMode::kInt8, backends::ref_cpu_backend());
  const std::vector<float> x = test::random_normal(size_t(c.m * c.k), 6);
  std::vector<float> all(size_t(c.m * c.n)), one(size_t(c.n));
  lin.forward(x.data(), c.m, all.data());
  for (int64_t i = 0; i < c.m; ++i) {
    lin.forward(x.data() + i * c.k, 1, one.data());
    for (int64_t o = 0; o < c.n; ++o) ASSERT_EQ(one[size_t(o)], all[size_t(i * c.n + o)]) << i << "," << o;
  }
}

// Weight-only mode: the FP32 reference linear on the dequantized weights, exactly.
TEST_P(QuantizedLinearTest, WeightOnlyModeIsFpLinearOnDequantizedWeights) {
  const Case c = GetParam();
  const Built b = build(c.variant, random_weight(c.n, c.k, 9));
  const QuantizedLinear lin(b.w, ActMode::kFloat, backends::ref_cpu_backend());
  EXPECT_THAT(lin.kind(), HasSubstr("16"));
  const Tensor deq = lin.dequantized_weight();
  const float* d = deq.data<float>();
  const float* r = b.dequant.data<float>();
  for (int64_t i = 0; i < deq.numel(); ++i) ASSERT_EQ(d[i], r[i]) << "dequantized weight " << i;
  const std::vector<float> x = test::random_normal(size_t(c.m * c.k), 10);
  std::vector<float> y(size_t(c.m * c.n)), ref(size_t(c.m * c.n));
  lin.forward(x.data(), c.m, y.data());
  backends::ref_cpu::linear(x.data(), r, nullptr, c.m, c.k, c.n, ref.data());
  EXPECT_EQ(y, ref);
}

INSTANTIATE_TEST_SUITE_P(Shapes, QuantizedLinearTest,
                         ::testing::Values(Case{WeightFormat::kW4A8PerChannel, 1, 67, 258},
                                           Case{WeightFormat::kW4A8PerChannel, 17, 33, 512},
                                           Case{WeightFormat::kW4A8G128, 3, 67, 384},
                                           Case{WeightFormat::kW4A8G128, 17, 40, 256},
                                           Case{WeightFormat::kW8A8, 1, 17, 130},
                                           Case{WeightFormat::kW8A8, 67, 31, 256}));

TEST(QuantizedLinear, KindNames) {
  const Tensor w = random_weight(8, 256, 1);
  EXPECT_EQ(QuantizedLinear(build(WeightFormat::kW4A8PerChannel, w).w, ActMode::kInt8, backends::ref_cpu_backend())
                .kind(),
            "w4a8-per-channel");
  EXPECT_EQ(QuantizedLinear(build(WeightFormat::kW4A8G128, w).w, ActMode::kInt8, backends::ref_cpu_backend()).kind(),
            "w4a8-g128");
  EXPECT_EQ(QuantizedLinear(build(WeightFormat::kW8A8, w).w, ActMode::kInt8, backends::ref_cpu_backend()).kind(),
            "w8a8");
}

TEST(QuantizedLinear, RejectsBadTensors) {
  const Tensor w = random_weight(8, 256, 2);
  auto expect_error = [](const QuantizedWeights& q, const std::string& what) {
    try {
      QuantizedLinear lin(q, ActMode::kInt8, backends::ref_cpu_backend(), "layers.0.q_proj");
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(what));
      EXPECT_THAT(e.what(), HasSubstr("layers.0.q_proj"));
    }
  };
  QuantizedWeights q = build(WeightFormat::kW4A8PerChannel, w).w;
  q.szero = Tensor();
  expect_error(q, "szero");
  q = build(WeightFormat::kW4A8PerChannel, w).w;
  q.scale = Tensor(DType::F16, {9});
  expect_error(q, "scale");
  q = build(WeightFormat::kW4A8G128, w).w;
  q.s2 = Tensor(DType::U8, {8, 3});
  expect_error(q, "s2");
  q = build(WeightFormat::kW4A8G128, w).w;
  q.zn = Tensor(DType::U8, {8, 2});
  expect_error(q, "zn");
  q = build(WeightFormat::kW8A8, w).w;
  q.qweight = Tensor(DType::U8, {8, 256});
  expect_error(q, "qweight");
  // g128 needs K a multiple of 128: qweight [8, 65] packs K = 130.
  q = build(WeightFormat::kW4A8G128, w).w;
  q.qweight = Tensor(DType::U8, {8, 65});
  expect_error(q, "group size");
}

TEST(Fp16Linear, RoundsWeightsOnceAndComputesInFp32) {
  const int64_t n = 19, k = 70;
  std::vector<float> wv = test::random_normal(size_t(n * k), 3, 0.3f);
  const Tensor w = Tensor::from_floats({n, k}, wv.data());
  const model::Fp16Linear lin(w, backends::ref_cpu_backend());
  EXPECT_EQ(lin.kind(), "fp16");
  int64_t changed = 0;
  std::vector<float> rounded(wv.size());
  for (size_t i = 0; i < wv.size(); ++i) {
    rounded[i] = round_fp16(wv[i]);
    ASSERT_EQ(lin.weight().data<float>()[i], rounded[i]);
    changed += rounded[i] != wv[i];
  }
  EXPECT_GT(changed, n * k / 2);                      // the rounding did something
  EXPECT_EQ(w.data<float>()[0], wv[0]);               // the caller's weight is untouched
  const std::vector<float> x = test::random_normal(size_t(5 * k), 4);
  std::vector<float> y(size_t(5 * n)), ref(size_t(5 * n));
  lin.forward(x.data(), 5, y.data());
  backends::ref_cpu::linear(x.data(), rounded.data(), nullptr, 5, k, n, ref.data());
  EXPECT_EQ(y, ref);
}

}  // namespace
}  // namespace qs
