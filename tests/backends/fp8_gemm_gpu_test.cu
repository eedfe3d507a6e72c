// FP8 baseline linear layer on the GPU: per-token FP8 activations from kernels/norm_quant act_quant_fp8 (checked
// bit-exact against the reference quantizer here too) times per-channel FP8 weights (ref_cpu::quantize_fp8_weights)
// through cuda::Fp8Gemm (cuBLASLt, outer-vector scales), compared with ref_cpu::fp8_gemm on the very same e4m3
// codes and scales. Tolerance (TESTING.md): FP16 output vs FP64 reference, normalized error <= 2e-3 (one FP16
// rounding, 2^-11, plus FP32 accumulation order). Awkward m (1, 3, 17, 67, 257) inside one plan of max_m 512 so
// every call uses a bucket's algorithm below its planned m; with and without a residual (aliasing y).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "backends/cuda/fp8_gemm.h"
#include "backends/ref_cpu/fp8_gemm.h"
#include "backends/ref_cpu/norm_quant.h"
#include "common/test_util.h"
#include "core/dtype.h"
#include "kernels/attention_gpu_util.cuh"
#include "kernels/norm_quant/norm_quant.h"

namespace qs {
namespace {


std::vector<uint16_t> fp16_rand(size_t n, uint64_t seed, float sd) {
  auto v = test::random_normal(n, seed, sd);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float_to_fp16(v[i]);
  return h;
}

class Fp8GemmGpu : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(Fp8GemmGpu, MatchesReference) {
  QS_REQUIRE_GPU();
  const auto [n, k] = GetParam();
  const auto wf = test::random_normal(size_t(n) * k, 1, 0.05f);
  const ref_cpu::Fp8Weights w = ref_cpu::quantize_fp8_weights(wf.data(), n, k);
  DeviceBuffer<uint8_t> dw(w.q);
  DeviceBuffer<float> dsw(w.scale);
  cuda::Fp8Gemm gemm(n, k, 512);
  DeviceBuffer<uint8_t> ws(std::max<size_t>(gemm.workspace_bytes(), 1));
  for (int m : {1, 3, 17, 67, 257, 512}) {
    SCOPED_TRACE("m=" + std::to_string(m));
    // Activations: FP16 -> act_quant_fp8 on the GPU, checked against the reference quantizer bit for bit.
    auto x = fp16_rand(size_t(m) * k, 10 + m, 2.0f);
    std::vector<uint8_t> q(size_t(m) * k);
    std::vector<float> sx(static_cast<size_t>(m));
    kernels::ActQuantParams a;
    a.x = x.data(); a.rows = m; a.cols = k; a.fp8 = {q.data(), sx.data()};
    ref_cpu::act_quant_fp8(a);
    DeviceBuffer<uint16_t> dx(x);
    DeviceBuffer<uint8_t> dq(q.size());
    DeviceBuffer<float> dsx(static_cast<size_t>(m));
    dq.fill_bytes(0x7f);  // e4m3 NaN: never produced for finite input
    a.x = dx.get(); a.fp8 = {dq.get(), dsx.get()};
    ASSERT_TRUE(kernels::act_quant_fp8(a, 0).is_ok());
    ASSERT_EQ(dq.download(), q);
    ASSERT_EQ(dsx.download(), sx);

    for (bool with_res : {false, true}) {
      SCOPED_TRACE(with_res ? "residual" : "no residual");
      const auto res = fp16_rand(size_t(m) * n, 20 + m, 1.0f);
      std::vector<float> ref(size_t(m) * n);
      ref_cpu::fp8_gemm(q.data(), sx.data(), m, w, with_res ? res.data() : nullptr, ref.data());
      DeviceBuffer<uint16_t> dy(size_t(m) * n);
      if (with_res) dy.upload(res);  // residual aliases y
      else test::poison(dy);
      cuda::Fp8GemmCall c;
      c.m = m; c.x = dq.get(); c.sx = dsx.get(); c.w = dw.get(); c.sw = dsw.get();
      c.residual = with_res ? dy.get() : nullptr; c.y = dy.get();
      const Status s = gemm.run(c, ws.get(), 0);
      ASSERT_TRUE(s.is_ok()) << s.message();
      EXPECT_EQ(test::nonfinite(dy), 0);
      const auto y = dy.download();
      std::vector<float> yf(y.size());
      for (size_t i = 0; i < y.size(); ++i) yf[i] = fp16_to_float(y[i]);
      EXPECT_LE(test::normalized_error(yf, ref), 2e-3);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8GemmGpu,
                         ::testing::Values(std::tuple{64, 128}, std::tuple{136, 272}, std::tuple{1024, 4096},
                                           std::tuple{4096, 1024}));

TEST(Fp8GemmGpuErrors, BadShapesAndCallsAreReported) {
  QS_REQUIRE_GPU();
  EXPECT_THAT(test::error_of([] { cuda::Fp8Gemm g(64, 100, 8); }), ::testing::HasSubstr("multiple of 16"));
  EXPECT_THAT(test::error_of([] { cuda::Fp8Gemm g(60, 128, 8); }), ::testing::HasSubstr("multiple of 8"));
  cuda::Fp8Gemm g(64, 128, 8);
  cuda::Fp8GemmCall c;
  c.m = 9;
  EXPECT_THAT(g.run(c, nullptr, 0).message(), ::testing::HasSubstr("outside [1, 8]"));
  c.m = 2;
  EXPECT_THAT(g.run(c, nullptr, 0).message(), ::testing::HasSubstr("are required"));
}

}  // namespace
}  // namespace qs
