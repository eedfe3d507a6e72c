// Tests of the reference CPU backend's FP32 ops against straightforward double-precision formulas on random data
// with awkward sizes. Tolerances (normalized L2 error, derived from the arithmetic in ops.h):
//  * linear: products rounded to fp32 and summed 8 per fp32 lane: <= ~8 * 2^-24 relative per block -> 1e-6;
//  * every other op is computed in double and rounded once to fp32: <= 2^-24 relative per element -> 1e-7.
#include "backends/ref_cpu/ops.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/test_util.h"
#include "core/error.h"

namespace qs::backends::ref_cpu {
namespace {

using ::testing::HasSubstr;
using qs::test::normalized_error;
using qs::test::random_normal;

constexpr double kLinearTol = 1e-6;
constexpr double kDoubleTol = 1e-7;

std::vector<float> ref_linear(const std::vector<float>& x, const std::vector<float>& w, const float* bias,
                              int64_t m, int64_t k, int64_t n) {
  std::vector<float> y(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < n; ++o) {
      double s = bias ? double(bias[o]) : 0.0;
      for (int64_t j = 0; j < k; ++j) s += double(x[size_t(i * k + j)]) * double(w[size_t(o * k + j)]);
      y[size_t(i * n + o)] = float(s);
    }
  return y;
}

TEST(RefCpuOps, LinearMatchesDoubleAcrossAwkwardShapes) {
  uint64_t seed = 1;
  for (int64_t m : {1, 3, 17, 67})
    for (int64_t k : {1, 7, 64, 65, 130, 257})
      for (int64_t n : {1, 5, 33, 70})
        for (bool with_bias : {false, true}) {
          auto x = random_normal(size_t(m * k), seed++);
          auto w = random_normal(size_t(n * k), seed++, 0.5f);
          auto b = random_normal(size_t(n), seed++);
          std::vector<float> y(size_t(m * n), NAN);
          linear(x.data(), w.data(), with_bias ? b.data() : nullptr, m, k, n, y.data());
          auto ref = ref_linear(x, w, with_bias ? b.data() : nullptr, m, k, n);
          EXPECT_LE(normalized_error(y, ref), kLinearTol) << "m=" << m << " k=" << k << " n=" << n;
        }
}

TEST(RefCpuOps, LinearRowsIndependentOfBatchAndDeterministic) {
  const int64_t m = 19, k = 300, n = 77;
  auto x = random_normal(size_t(m * k), 11);
  auto w = random_normal(size_t(n * k), 12);
  std::vector<float> y(size_t(m * n)), y2(size_t(m * n)), row(static_cast<size_t>(n));
  linear(x.data(), w.data(), nullptr, m, k, n, y.data());
  linear(x.data(), w.data(), nullptr, m, k, n, y2.data());
  EXPECT_EQ(y, y2);
  for (int64_t i = 0; i < m; ++i) {
    linear(x.data() + i * k, w.data(), nullptr, 1, k, n, row.data());
    for (int64_t o = 0; o < n; ++o) ASSERT_EQ(row[size_t(o)], y[size_t(i * n + o)]) << "row " << i << " col " << o;
  }
}

TEST(RefCpuOps, RmsNormMatchesDouble) {
  for (int64_t m : {1, 3, 17})
    for (int64_t d : {1, 5, 128, 515}) {
      auto x = random_normal(size_t(m * d), uint64_t(m * 1000 + d), 3.0f);
      auto w = random_normal(size_t(d), uint64_t(d));
      std::vector<float> y(x.size(), NAN), ref(x.size());
      const double eps = 1e-5;
      rmsnorm(x.data(), w.data(), m, d, eps, y.data());
      for (int64_t i = 0; i < m; ++i) {
        double ss = 0;
        for (int64_t j = 0; j < d; ++j) ss += double(x[size_t(i * d + j)]) * x[size_t(i * d + j)];
        const double r = std::sqrt(ss / double(d) + eps);
        for (int64_t j = 0; j < d; ++j) ref[size_t(i * d + j)] = float(x[size_t(i * d + j)] / r * w[size_t(j)]);
      }
      EXPECT_LE(normalized_error(y, ref), kDoubleTol);
      // In place gives the same bits.
      rmsnorm(x.data(), w.data(), m, d, eps, x.data());
      EXPECT_EQ(x, y);
    }
}

TEST(RefCpuOps, RopeMatchesRotateHalfFormula) {
  for (int64_t head_dim : {2, 64, 128})
    for (int64_t heads : {1, 3}) {
      const int64_t m = 17, half = head_dim / 2;
      auto x = random_normal(size_t(m * heads * head_dim), uint64_t(head_dim * 10 + heads));
      std::vector<int64_t> pos(static_cast<size_t>(m));
      for (int64_t i = 0; i < m; ++i) pos[size_t(i)] = (i * 37) % 2049;  // not monotonic on purpose
      std::vector<double> inv(static_cast<size_t>(half));
      for (int64_t j = 0; j < half; ++j) inv[size_t(j)] = std::pow(500000.0, -2.0 * double(j) / double(head_dim));
      std::vector<float> ref(x.size());
      for (int64_t i = 0; i < m; ++i)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t j = 0; j < head_dim; ++j) {
            const size_t base = size_t((i * heads + h) * head_dim);
            const int64_t jj = j % half;
            const double ang = double(pos[size_t(i)]) * inv[size_t(jj)];
            // rotate_half(x) = [-x2, x1]
            const double rot = j < half ? -double(x[base + size_t(j + half)]) : double(x[base + size_t(j - half)]);
            ref[base + size_t(j)] = float(double(x[base + size_t(j)]) * std::cos(ang) + rot * std::sin(ang));
          }
      rope(x.data(), m, heads, head_dim, pos.data(), inv.data());
      EXPECT_LE(normalized_error(x, ref), kDoubleTol) << "head_dim " << head_dim;
    }
}

struct AttnCase {
  int64_t m, q_pos0, heads, kv_heads, head_dim, window;
};

TEST(RefCpuOps, AttentionMatchesDoubleSoftmaxWithGqaCausalAndWindow) {
  const std::vector<AttnCase> cases = {
      {1, 0, 1, 1, 4, 0},     {3, 0, 2, 1, 8, 0},   {17, 0, 6, 2, 16, 0},  {1, 64, 4, 1, 32, 0},
      {5, 60, 7, 1, 64, 0},   {17, 3, 8, 2, 24, 0}, {67, 0, 3, 3, 8, 0},   {20, 10, 4, 2, 8, 7},
      {1, 100, 14, 2, 128, 16}, {9, 0, 4, 4, 8, 1},
  };
  uint64_t seed = 100;
  for (const auto& c : cases) {
    const int64_t kv_len = c.q_pos0 + c.m + 2;  // extra keys past the last query must stay invisible
    auto q = random_normal(size_t(c.m * c.heads * c.head_dim), seed++);
    auto k = random_normal(size_t(kv_len * c.kv_heads * c.head_dim), seed++);
    auto v = random_normal(size_t(kv_len * c.kv_heads * c.head_dim), seed++);
    std::vector<float> out(q.size(), NAN), ref(q.size());
    AttentionArgs a;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.out = out.data();
    a.m = c.m;
    a.kv_len = kv_len;
    a.q_pos0 = c.q_pos0;
    a.num_heads = c.heads;
    a.num_kv_heads = c.kv_heads;
    a.head_dim = c.head_dim;
    a.sliding_window = c.window;
    a.scale = 1.0 / std::sqrt(double(c.head_dim));
    attention(a);
    const int64_t g = c.heads / c.kv_heads, d = c.head_dim;
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t h = 0; h < c.heads; ++h) {
        const int64_t pos = c.q_pos0 + i;
        std::vector<double> s(size_t(kv_len), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < kv_len; ++j) {
          const bool visible = j <= pos && (c.window == 0 || pos - j < c.window);
          if (!visible) continue;
          double dot = 0;
          for (int64_t e = 0; e < d; ++e)
            dot += double(q[size_t((i * c.heads + h) * d + e)]) * k[size_t((j * c.kv_heads + h / g) * d + e)];
          s[size_t(j)] = dot * a.scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        double z = 0;
        for (auto& sj : s) z += (sj = std::exp(sj - mx));
        for (int64_t e = 0; e < d; ++e) {
          double o = 0;
          for (int64_t j = 0; j < kv_len; ++j) o += s[size_t(j)] / z * v[size_t((j * c.kv_heads + h / g) * d + e)];
          ref[size_t((i * c.heads + h) * d + e)] = float(o);
        }
      }
    EXPECT_LE(normalized_error(out, ref), kDoubleTol)
        << "m=" << c.m << " pos0=" << c.q_pos0 << " heads=" << c.heads << "/" << c.kv_heads << " window=" << c.window;
  }
}

TEST(RefCpuOps, AttentionRejectsBadShapes) {
  std::vector<float> buf(1024, 1.0f);
  AttentionArgs a;
  a.q = a.k = a.v = buf.data();
  a.out = buf.data();
  a.m = 2;
  a.kv_len = 4;
  a.num_heads = 3;
  a.num_kv_heads = 2;
  a.head_dim = 8;
  a.scale = 1.0;
  try {
    attention(a);
    FAIL() << "expected qs::Error";
  } catch (const qs::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not a multiple of num_kv_heads"));
  }
  a.num_heads = 2;
  a.q_pos0 = 3;  // queries at 3..4 but only 4 keys
  try {
    attention(a);
    FAIL() << "expected qs::Error";
  } catch (const qs::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("kv_len is 4"));
  }
}

TEST(RefCpuOps, SiluMulEmbeddingAdd) {
  const int64_t n = 1001;
  auto g = random_normal(size_t(n), 7, 4.0f), u = random_normal(size_t(n), 8);
  std::vector<float> y(size_t(n), NAN), ref(static_cast<size_t>(n));
  silu_mul(g.data(), u.data(), n, y.data());
  for (int64_t i = 0; i < n; ++i) ref[size_t(i)] = float(double(g[size_t(i)]) / (1 + std::exp(-double(g[size_t(i)]))) * u[size_t(i)]);
  EXPECT_LE(normalized_error(y, ref), kDoubleTol);

  std::vector<float> s(size_t(n), NAN);
  add(g.data(), u.data(), n, s.data());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(s[size_t(i)], g[size_t(i)] + u[size_t(i)]);

  const int64_t vocab = 13, d = 7;
  auto table = random_normal(size_t(vocab * d), 9);
  std::vector<int32_t> ids = {12, 0, 5, 5};
  std::vector<float> e(ids.size() * d, NAN);
  embedding(ids.data(), int64_t(ids.size()), table.data(), vocab, d, e.data());
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(e[i * d + size_t(j)], table[size_t(ids[i] * d + j)]);
  ids[2] = 13;
  try {
    embedding(ids.data(), int64_t(ids.size()), table.data(), vocab, d, e.data());
    FAIL() << "expected qs::Error";
  } catch (const qs::Error& ex) {
    EXPECT_THAT(ex.what(), HasSubstr("token id 13 at index 2 is outside the vocabulary [0, 13)"));
  }
}

TEST(RefCpuOps, BackendObjectForwardsToReference) {
  const Backend& b = ref_cpu_backend();
  EXPECT_EQ(b.name(), "ref_cpu");
  auto x = random_normal(6 * 40, 21), w = random_normal(9 * 40, 22);
  std::vector<float> y1(54), y2(54);
  b.linear(x.data(), w.data(), nullptr, 6, 40, 9, y1.data());
  linear(x.data(), w.data(), nullptr, 6, 40, 9, y2.data());
  EXPECT_EQ(y1, y2);
}

}  // namespace
}  // namespace qs::backends::ref_cpu
