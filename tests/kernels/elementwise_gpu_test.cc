// The engine's small kernels (kernels/elementwise) against host references on random inputs with awkward sizes:
// embedding gather (exact, zeros for an out-of-range id), FP16 RMSNorm with a row gather and SiLU*up (FP16 output:
// normalized error <= 2e-3, TESTING.md), greedy argmax (exact, ties to the lowest index), the g128 random fill
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
#include "kernels/elementwise/elementwise.h"

namespace qs {
namespace {

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) {
    QS_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
    QS_CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(1, n) * sizeof(T)));  // poison (FP16 NaN pattern)
  }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) {
    QS_CUDA_CHECK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    QS_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

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
  Dev<uint16_t> dt(table), out(ids.size() * cols);
  Dev<int32_t> di(ids);
  ASSERT_TRUE(kernels::embedding_gather_f16(di.p, int32_t(ids.size()), dt.p, vocab, cols, out.p, 0).is_ok());
  const auto h = out.host();
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
    Dev<uint16_t> dx(x), dw(w), out(idx.size() * size_t(cols));
    Dev<int32_t> di(idx);
    ASSERT_TRUE(kernels::rmsnorm_f16(dx.p, di.p, int32_t(idx.size()), cols, dw.p, 1e-5f, out.p, 0).is_ok());
    const auto got = to_f32(out.host());
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
  Dev<uint16_t> dg(gu), out(size_t(rows) * cols);
  ASSERT_TRUE(kernels::silu_mul_f16(dg.p, rows, cols, out.p, 0).is_ok());
  const auto got = to_f32(out.host());
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

// Host reference: index of the largest value, the lowest among equal maxima (model::argmax semantics).
int64_t ref_argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

TEST(Elementwise, ArgmaxIsExactWithTiesToTheLowestIndex) {
  QS_REQUIRE_GPU();
  const int rows = 5;
  const int64_t cols = 128257;  // odd, larger than a block's stride
  std::vector<float> x = test::random_normal(size_t(rows) * cols, 5);
  x[size_t(1) * cols + 70000] = 50.0f;  // row 1: a tie between 70000 and 3; 3 wins
  x[size_t(1) * cols + 3] = 50.0f;
  x[size_t(2) * cols + cols - 1] = 60.0f;  // row 2: the last column
  for (int64_t c = 0; c < cols; ++c) x[size_t(3) * cols + size_t(c)] = -1.0f;  // row 3: all equal: 0
  Dev<float> dx(x);
  Dev<int32_t> out(static_cast<size_t>(rows));
  ASSERT_TRUE(kernels::argmax_f32(dx.p, rows, cols, out.p, 0).is_ok());
  const auto got = out.host();
  for (int r = 0; r < rows; ++r) EXPECT_EQ(got[size_t(r)], ref_argmax(x.data() + size_t(r) * cols, cols)) << r;
  EXPECT_EQ(got[1], 3);
  EXPECT_EQ(got[2], cols - 1);
  EXPECT_EQ(got[3], 0);
}

TEST(Elementwise, RandomFillsAreValid) {
  QS_REQUIRE_GPU();
  const int64_t n = 100003;
  Dev<uint16_t> s(static_cast<size_t>(n)), u(static_cast<size_t>(n));
  ASSERT_TRUE(kernels::fill_random_s2zn(s.p, n, 9, 0).is_ok());
  ASSERT_TRUE(kernels::fill_uniform_f16(u.p, n, 9, 0.5f, 0).is_ok());
  const auto hs = s.host();
  const auto hu = to_f32(u.host());
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
