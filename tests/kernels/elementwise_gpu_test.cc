// The engine's small kernels (kernels/elementwise) against host references on random inputs with awkward sizes:
// embedding gather (exact, zeros for an out-of-range id), FP16 RMSNorm with a row gather and SiLU*up (FP16 output:
// normalized error <= 2e-3, TESTING.md), the g128 random fill
// (valid level-2 words). Outputs are poisoned before each launch.
#include <gtest/gtest.h>

#include "common/test_util.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/device_buffer.h"
#include "kernels/elementwise/elementwise.h"

namespace qs {
namespace {

// A device buffer poisoned with 0xff (FP16 NaN pattern), so an unwritten output cannot pass.
template <typename T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> b(n);
  b.fill_bytes(0xff);
  return b;
}

std::vector<uint16_t> random_f16(size_t n, uint64_t seed, float sd = 1.0f) {
  const auto f = test::random_normal(n, seed, sd);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float_to_fp16(f[i]);
  return h;
}

std::vector<float> to_f32(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = fp16_to_float(h[i]);
  return f;
}

TEST(Elementwise, EmbeddingGatherIsExact) {
  QS_REQUIRE_GPU();
  const int64_t vocab = 67;
  const int cols = 136;
  const auto table = random_f16(size_t(vocab * cols), 1);
  const std::vector<int32_t> ids = {0, 66, 5, 5, -1, 67, 31};
  DeviceBuffer<uint16_t> dt(table), out = poisoned<uint16_t>(ids.size() * cols);
  DeviceBuffer<int32_t> di(ids);
  ASSERT_TRUE(kernels::embedding_gather_f16(di.get(), int32_t(ids.size()), dt.get(), vocab, cols, out.get(), 0).is_ok());
  const auto h = out.download();
  for (size_t r = 0; r < ids.size(); ++r)
    for (int c = 0; c < cols; ++c) {
      const bool ok = ids[r] >= 0 && ids[r] < vocab;
      ASSERT_EQ(h[r * cols + size_t(c)], ok ? table[size_t(ids[r]) * cols + size_t(c)] : uint16_t(0)) << r << " " << c;
    }
}

TEST(Elementwise, RmsNormWithRowGatherMatchesHost) {
  QS_REQUIRE_GPU();
  for (int cols : {128, 512, 4096, 5120}) {
    const int src_rows = 17;
    const std::vector<int32_t> idx = {16, 0, 3, 3, 9};
    const auto x = random_f16(size_t(src_rows) * cols, 2 + cols, 3.0f);
    const auto w = random_f16(size_t(cols), 3 + cols);
    DeviceBuffer<uint16_t> dx(x), dw(w), out = poisoned<uint16_t>(idx.size() * size_t(cols));
    DeviceBuffer<int32_t> di(idx);
    ASSERT_TRUE(kernels::rmsnorm_f16(dx.get(), di.get(), int32_t(idx.size()), cols, dw.get(), 1e-5f, out.get(), 0).is_ok());
    const auto got = to_f32(out.download());
    std::vector<float> ref(got.size());
    for (size_t r = 0; r < idx.size(); ++r) {
      double ss = 0;
      for (int c = 0; c < cols; ++c) ss += double(fp16_to_float(x[size_t(idx[r]) * cols + size_t(c)])) *
                                           fp16_to_float(x[size_t(idx[r]) * cols + size_t(c)]);
      const double inv = 1.0 / std::sqrt(ss / cols + 1e-5);
      for (int c = 0; c < cols; ++c)
        ref[r * cols + size_t(c)] = float(fp16_to_float(x[size_t(idx[r]) * cols + size_t(c)]) * inv *
                                          fp16_to_float(w[size_t(c)]));
    }
    for (float v : got) ASSERT_TRUE(std::isfinite(v));
    EXPECT_LE(test::normalized_error(got, ref), 2e-3) << cols;
  }
}

TEST(Elementwise, SiluMulMatchesHost) {
  QS_REQUIRE_GPU();
  const int rows = 3, cols = 1000;
  const auto gu = random_f16(size_t(rows) * 2 * cols, 4, 2.0f);
  DeviceBuffer<uint16_t> dg(gu), out = poisoned<uint16_t>(size_t(rows) * cols);
  ASSERT_TRUE(kernels::silu_mul_f16(dg.get(), rows, cols, out.get(), 0).is_ok());
  const auto got = to_f32(out.download());
  std::vector<float> ref(got.size());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double g = fp16_to_float(gu[size_t(r) * 2 * cols + size_t(c)]);
      const double u = fp16_to_float(gu[size_t(r) * 2 * cols + size_t(cols + c)]);
      ref[size_t(r) * cols + size_t(c)] = float(g / (1.0 + std::exp(-g)) * u);
    }
  for (float v : got) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LE(test::normalized_error(got, ref), 2e-3);
}

TEST(Elementwise, RandomFillsAreValid) {
  QS_REQUIRE_GPU();
  const int64_t n = 100003;
  DeviceBuffer<uint16_t> s = poisoned<uint16_t>(size_t(n)), u = poisoned<uint16_t>(size_t(n));
  ASSERT_TRUE(kernels::fill_random_s2zn(s.get(), n, 9, 0).is_ok());
  ASSERT_TRUE(kernels::fill_uniform_f16(u.get(), n, 9, 0.5f, 0).is_ok());
  const auto hs = s.download();
  const auto hu = to_f32(u.download());
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int s2 = hs[size_t(i)] & 0xff, zn = int8_t(hs[size_t(i)] >> 8);
    ASSERT_TRUE(s2 >= 1 && s2 <= 16) << i;
    ASSERT_EQ(zn, -8 * s2) << i;
    ASSERT_TRUE(std::abs(hu[size_t(i)]) <= 0.5f) << i;
    mean += hu[size_t(i)];
  }
  EXPECT_LT(std::abs(mean / double(n)), 0.01);
}

}  // namespace
}  // namespace qs

#else
TEST(Elementwise, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif
