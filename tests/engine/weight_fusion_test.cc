// Fusing q/k/v (or gate/up) into one quantized GEMM is bit-exact: the fused weight's outputs are the parts'
// outputs side by side, INT32 accumulators and FP32 epilogue alike (ref_cpu integer GEMM), for per-channel and
// g128, with a bias on only some parts; FP fusion keeps the FP16 rows in order.
#include "engine/weight_fusion.h"

#include <gtest/gtest.h>

#include <random>

#include "backends/ref_cpu/gemm_w4a8.h"
#include "common/test_util.h"
#include "core/dtype.h"

namespace qs {
namespace {

model::QuantizedWeights random_part(WeightFormat v, int64_t n, int64_t k, bool bias, std::mt19937& rng) {
  model::QuantizedWeights w;
  w.variant = v;
  w.qweight = Tensor(DType::U8, {n, k / 2});
  for (int64_t i = 0; i < w.qweight.numel(); ++i) w.qweight.data<uint8_t>()[i] = uint8_t(rng());
  w.scale = Tensor(DType::F16, {n});
  std::uniform_real_distribution<float> u(0.001f, 0.02f);
  for (int64_t i = 0; i < n; ++i) w.scale.data<uint16_t>()[i] = float_to_fp16(u(rng));
  if (v == WeightFormat::kW4A8PerChannel) {
    w.szero = Tensor(DType::F16, {n});
    for (int64_t i = 0; i < n; ++i) w.szero.data<uint16_t>()[i] = float_to_fp16(8.0f * u(rng));
  } else {
    w.s2 = Tensor(DType::U8, {n, k / 128});
    w.zn = Tensor(DType::I8, {n, k / 128});
    for (int64_t i = 0; i < n * (k / 128); ++i) {
      const int s2 = 1 + int(rng() % 16), z = int(rng() % 9);
      w.s2.data<uint8_t>()[i] = uint8_t(s2);
      w.zn.data<int8_t>()[i] = int8_t(-z * s2);
    }
  }
  if (bias) {
    w.bias = Tensor(DType::F16, {n});
    for (int64_t i = 0; i < n; ++i) w.bias.data<uint16_t>()[i] = float_to_fp16(u(rng) - 0.01f);
  }
  return w;
}

ref_cpu::QGemmWeights view(const model::QuantizedWeights& w) {
  return {w.variant,
          w.qweight.dim(0),
          2 * w.qweight.dim(1),
          static_cast<const uint8_t*>(w.qweight.raw()),
          static_cast<const uint16_t*>(w.scale.raw()),
          static_cast<const uint16_t*>(w.szero.raw()),
          static_cast<const uint8_t*>(w.s2.raw()),
          static_cast<const int8_t*>(w.zn.raw())};
}

void check_fusion(WeightFormat v) {
  std::mt19937 rng(7);
  const int64_t k = 384, m = 17;
  const std::vector<int64_t> ns = {48, 16, 32};
  std::vector<model::QuantizedWeights> parts;
  for (size_t i = 0; i < ns.size(); ++i) parts.push_back(random_part(v, ns[i], k, i == 0, rng));
  const model::QuantizedWeights fused = engine::fuse_quantized_rows({&parts[0], &parts[1], &parts[2]});
  ASSERT_EQ(fused.qweight.dim(0), 96);
  ASSERT_TRUE(fused.bias.raw() != nullptr);
  const std::vector<float> xf = test::random_normal(size_t(m * k), 3);
  const model::QuantizedActs x = model::quantize_acts(xf.data(), m, k);
  std::vector<float> yf(size_t(m * 96));
  std::vector<int32_t> af(size_t(m * 96));
  ref_cpu::QGemmEpilogue ef;
  ef.bias = static_cast<const uint16_t*>(fused.bias.raw());
  ref_cpu::qgemm(view(fused), x.view(m), ef, yf.data(), af.data());
  int64_t col0 = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const int64_t n = ns[i];
    std::vector<float> y(size_t(m * n));
    std::vector<int32_t> a(size_t(m * n));
    ref_cpu::QGemmEpilogue e;
    e.bias = static_cast<const uint16_t*>(parts[i].bias.raw());
    ref_cpu::qgemm(view(parts[i]), x.view(m), e, y.data(), a.data());
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        ASSERT_EQ(a[size_t(r * n + c)], af[size_t(r * 96 + col0 + c)]) << "part " << i << " row " << r << " col " << c;
        ASSERT_EQ(float_to_bits(y[size_t(r * n + c)]), float_to_bits(yf[size_t(r * 96 + col0 + c)]))
            << "part " << i << " row " << r << " col " << c;
      }
    col0 += n;
  }
}

TEST(WeightFusion, PerChannelFusedEqualsSeparateBitExact) { check_fusion(WeightFormat::kW4A8PerChannel); }
TEST(WeightFusion, G128FusedEqualsSeparateBitExact) { check_fusion(WeightFormat::kW4A8G128); }

// gate/up interleaved for the SiLU*up epilogue: output column 2j is gate's column j, 2j + 1 up's, bit for bit.
void check_interleave(WeightFormat v) {
  std::mt19937 rng(11);
  const int64_t n = 48, k = 256, m = 9;
  const model::QuantizedWeights g = random_part(v, n, k, true, rng), u = random_part(v, n, k, false, rng);
  const model::QuantizedWeights f = engine::interleave_quantized_rows(g, u);
  ASSERT_EQ(f.qweight.dim(0), 2 * n);
  const std::vector<float> xf = test::random_normal(size_t(m * k), 5);
  const model::QuantizedActs x = model::quantize_acts(xf.data(), m, k);
  auto run = [&](const model::QuantizedWeights& w, int64_t cols) {
    std::vector<float> y(size_t(m * cols));
    std::vector<int32_t> a(size_t(m * cols));
    ref_cpu::QGemmEpilogue e;
    e.bias = static_cast<const uint16_t*>(w.bias.raw());
    ref_cpu::qgemm(view(w), x.view(m), e, y.data(), a.data());
    return y;
  };
  const std::vector<float> yf = run(f, 2 * n), yg = run(g, n), yu = run(u, n);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_EQ(float_to_bits(yf[size_t(r * 2 * n + 2 * j)]), float_to_bits(yg[size_t(r * n + j)])) << r << "," << j;
      ASSERT_EQ(float_to_bits(yf[size_t(r * 2 * n + 2 * j + 1)]), float_to_bits(yu[size_t(r * n + j)])) << r << "," << j;
    }
}

TEST(WeightFusion, PerChannelInterleavedGateUpPairsColumns) { check_interleave(WeightFormat::kW4A8PerChannel); }
TEST(WeightFusion, G128InterleavedGateUpPairsColumns) { check_interleave(WeightFormat::kW4A8G128); }

TEST(WeightFusion, MismatchedPartsAreRejected) {
  std::mt19937 rng(1);
  const auto a = random_part(WeightFormat::kW4A8PerChannel, 16, 256, false, rng);
  const auto b = random_part(WeightFormat::kW4A8G128, 16, 256, false, rng);
  const auto c = random_part(WeightFormat::kW4A8PerChannel, 16, 384, false, rng);
  EXPECT_NE(test::error_of([&] { engine::fuse_quantized_rows({&a, &b}); }).find("variant"), std::string::npos);
  EXPECT_NE(test::error_of([&] { engine::fuse_quantized_rows({&a, &c}); }).find("input size"), std::string::npos);
  const auto d = random_part(WeightFormat::kW4A8PerChannel, 32, 256, false, rng);
  EXPECT_NE(test::error_of([&] { engine::interleave_quantized_rows(a, d); }).find("same number of rows"),
            std::string::npos);
}

TEST(WeightFusion, FpRowsConcatenateInOrder) {
  Tensor a(DType::F32, {2, 3}), b(DType::F32, {1, 3});
  for (int i = 0; i < 6; ++i) a.data<float>()[i] = float(i) + 0.5f;
  for (int i = 0; i < 3; ++i) b.data<float>()[i] = -float(i) - 0.25f;
  const auto f = engine::fuse_fp16_rows({&a, &b});
  ASSERT_EQ(f.size(), 9u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f[size_t(i)], float_to_fp16(float(i) + 0.5f));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(f[size_t(6 + i)], float_to_fp16(-float(i) - 0.25f));
}

}  // namespace
}  // namespace qs
