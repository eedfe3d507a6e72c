// The optimized CPU backend equals the reference backend within fp32 re-association error (TESTING.md: 1e-5),
// on awkward shapes, and is deterministic and batch-independent bit for bit.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>

#include "backends/cpu/cpu_backend.h"
#include "backends/ref_cpu/ops.h"
#include "common/test_util.h"

namespace qs::backends {
namespace {

TEST(CpuBackend, LinearMatchesReferenceOnAwkwardShapes) {
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 7, 5}, {3, 8, 4}, {17, 67, 33}, {67, 512, 257}, {5, 1536, 512},
                               {2, 129, 1031}, {258, 64, 9}};
  uint64_t seed = 1;
  for (const auto& s : shapes) {
    const int64_t m = s[0], k = s[1], n = s[2];
    SCOPED_TRACE(::testing::Message() << "m=" << m << " k=" << k << " n=" << n);
    auto x = test::random_normal(size_t(m * k), seed++);
    auto w = test::random_normal(size_t(n * k), seed++, 0.05f);
    auto b = test::random_normal(size_t(n), seed++);
    for (const float* bias : {static_cast<const float*>(nullptr), static_cast<const float*>(b.data())}) {
      std::vector<float> y(size_t(m * n), NAN), ref(size_t(m * n));
      cpu::linear(x.data(), w.data(), bias, m, k, n, y.data());
      ref_cpu::linear(x.data(), w.data(), bias, m, k, n, ref.data());
      EXPECT_LE(test::normalized_error(y, ref), 1e-5);
    }
  }
}

TEST(CpuBackend, LinearIsBatchIndependentBitForBit) {
  const int64_t m = 11, k = 300, n = 70;
  auto x = test::random_normal(size_t(m * k), 7);
  auto w = test::random_normal(size_t(n * k), 8);
  std::vector<float> all(size_t(m * n));
  cpu::linear(x.data(), w.data(), nullptr, m, k, n, all.data());
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> one(static_cast<size_t>(n));
    cpu::linear(x.data() + i * k, w.data(), nullptr, 1, k, n, one.data());
    for (int64_t o = 0; o < n; ++o) ASSERT_EQ(one[size_t(o)], all[size_t(i * n + o)]) << "row " << i << " col " << o;
  }
}

TEST(CpuBackend, AttentionMatchesReference) {
  struct Case {
    int64_t m, kv_len, q_pos0, heads, kv_heads, d, window;
  } cases[] = {{1, 1, 0, 4, 2, 128, 0}, {5, 70, 65, 8, 8, 64, 0}, {33, 33, 0, 7, 1, 128, 0}, {17, 40, 23, 4, 2, 128, 9}};
  uint64_t seed = 100;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "m=" << c.m << " kv=" << c.kv_len << " heads=" << c.heads << "/" << c.kv_heads);
    auto q = test::random_normal(size_t(c.m * c.heads * c.d), seed++);
    auto k = test::random_normal(size_t(c.kv_len * c.kv_heads * c.d), seed++);
    auto v = test::random_normal(size_t(c.kv_len * c.kv_heads * c.d), seed++);
    std::vector<float> out(q.size(), NAN), ref(q.size());
    AttentionArgs a;
    a.q = q.data(); a.k = k.data(); a.v = v.data();
    a.m = c.m; a.kv_len = c.kv_len; a.q_pos0 = c.q_pos0; a.num_heads = c.heads; a.num_kv_heads = c.kv_heads;
    a.head_dim = c.d; a.sliding_window = c.window; a.scale = 1.0 / std::sqrt(double(c.d));
    a.out = out.data();
    cpu::attention(a);
    a.out = ref.data();
    ref_cpu::attention(a);
    EXPECT_LE(test::normalized_error(out, ref), 1e-5);
  }
}

}  // namespace
}  // namespace qs::backends
