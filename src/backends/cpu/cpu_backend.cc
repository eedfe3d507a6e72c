// Optimized CPU backend (see cpu_backend.h). The GEMM micro-kernel computes a 3 x 4 tile of y (3 input rows
// against 4 weight rows) with 12 accumulators of 8 fp32 lanes; lane l of y[i, o] sums x[i, j] * w[o, j] for
// j = l (mod 8) in increasing j, the lanes are then added pairwise in a fixed tree, then the k % 8 tail and the
// bias. Edge tiles run the same per-element sequence with fewer rows, so the result never depends on tiling.
#include "backends/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/ref_cpu/ops.h"
#include "core/error.h"
#include "core/thread_pool.h"

// The 32-byte vector helpers are always inlined into the target-specific clones: no ABI crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace qs::backends::cpu {
namespace {

typedef float v8f __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v8f v) {
  const float a = (v[0] + v[4]) + (v[2] + v[6]);
  const float b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

// Computes y[r, c] for r < R rows of x and c < C rows of w (R <= 3, C <= 4).
template <int R, int C>
__attribute__((always_inline)) inline void tile(const float* x, const float* w, const float* bias, int64_t k,
                                                int64_t ldy, float* y) {
  v8f acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = v8f{0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t k8 = k / 8 * 8;
  for (int64_t j = 0; j < k8; j += 8) {
    v8f wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) wv[c] = load8(w + c * k + j);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const v8f xv = load8(x + r * k + j);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] += xv * wv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t j = k8; j < k; ++j) s += x[r * k + j] * w[c * k + j];
      if (bias) s += bias[c];
      y[r * ldy + c] = s;
    }
}

template <int R>
__attribute__((always_inline)) inline void row_block(const float* x, const float* w, const float* bias, int64_t k,
                                                     int64_t n, int64_t o0, int64_t o1, float* y) {
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) tile<R, 4>(x, w + o * k, bias ? bias + o : nullptr, k, n, y + o);
  switch (o1 - o) {
    case 3: tile<R, 3>(x, w + o * k, bias ? bias + o : nullptr, k, n, y + o); break;
    case 2: tile<R, 2>(x, w + o * k, bias ? bias + o : nullptr, k, n, y + o); break;
    case 1: tile<R, 1>(x, w + o * k, bias ? bias + o : nullptr, k, n, y + o); break;
    default: break;
  }
}

// One block of output columns [o0, o1) for all rows. Compiled for Haswell-class processors (AVX2 + FMA) and
// generic x86-64; the loader picks one.
__attribute__((target_clones("arch=haswell", "default"))) void gemm_block(const float* x, const float* w,
                                                                        const float* bias, int64_t m, int64_t k,
                                                                        int64_t n, int64_t o0, int64_t o1, float* y) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) row_block<3>(x + i * k, w, bias, k, n, o0, o1, y + i * n);
  if (m - i == 2) row_block<2>(x + i * k, w, bias, k, n, o0, o1, y + i * n);
  if (m - i == 1) row_block<1>(x + i * k, w, bias, k, n, o0, o1, y + i * n);
}

__attribute__((target_clones("arch=haswell", "default"))) float dot8(const float* a, const float* b, int64_t k) {
  v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t k8 = k / 8 * 8;
  for (int64_t j = 0; j < k8; j += 8) acc += load8(a + j) * load8(b + j);
  float s = hsum(acc);
  for (int64_t j = k8; j < k; ++j) s += a[j] * b[j];
  return s;
}

__attribute__((target_clones("arch=haswell", "default"))) void axpy(float alpha, const float* x, int64_t d,
                                                                   float* y) {
  for (int64_t e = 0; e < d; ++e) y[e] += alpha * x[e];
}

}  // namespace

void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n, float* y) {
  QS_CHECK(m >= 0 && k > 0 && n > 0) << "linear: bad shape m=" << m << " k=" << k << " n=" << n;
  if (m == 0) return;
  // Column blocks of weight rows small enough to stay in L2 while all input rows stream past them.
  const int64_t block = std::max<int64_t>(4, std::min<int64_t>(256, (256 * 1024 / 4) / k) / 4 * 4);
  const int64_t nblocks = (n + block - 1) / block;
  parallel_for(nblocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) gemm_block(x, w, bias, m, k, n, b * block, std::min(n, (b + 1) * block), y);
  });
}

void attention(const AttentionArgs& a) {
  ref_cpu::check_attention_args(a);
  const int64_t group = a.num_heads / a.num_kv_heads, d = a.head_dim;
  parallel_for(a.m * a.num_heads, [&](int64_t t0, int64_t t1) {
    std::vector<float> p(static_cast<size_t>(a.kv_len)), acc(static_cast<size_t>(d));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / a.num_heads, h = t % a.num_heads, kvh = h / group;
      const int64_t pos = a.q_pos0 + i;
      const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos - a.sliding_window + 1) : 0;
      const float* q = a.q + (i * a.num_heads + h) * d;
      const float scale = float(a.scale);
      float mx = -INFINITY;
      for (int64_t j = lo; j <= pos; ++j) {
        const float s = dot8(q, a.k + (j * a.num_kv_heads + kvh) * d, d) * scale;
        p[size_t(j)] = s;
        mx = std::max(mx, s);
      }
      double denom = 0.0;
      for (int64_t j = lo; j <= pos; ++j) {
        p[size_t(j)] = std::exp(p[size_t(j)] - mx);
        denom += p[size_t(j)];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = lo; j <= pos; ++j) axpy(p[size_t(j)], a.v + (j * a.num_kv_heads + kvh) * d, d, acc.data());
      float* out = a.out + (i * a.num_heads + h) * d;
      const float inv = float(1.0 / denom);
      for (int64_t e = 0; e < d; ++e) out[e] = acc[size_t(e)] * inv;
    }
  });
}

namespace {
class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n,
              float* y) const override {
    cpu::linear(x, w, bias, m, k, n, y);
  }
  void rmsnorm(const float* x, const float* w, int64_t m, int64_t d, double eps, float* y) const override {
    ref_cpu_backend().rmsnorm(x, w, m, d, eps, y);
  }
  void rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, const int64_t* positions,
            const double* inv_freq) const override {
    ref_cpu_backend().rope(x, m, num_heads, head_dim, positions, inv_freq);
  }
  void attention(const AttentionArgs& a) const override { cpu::attention(a); }
  void silu_mul(const float* gate, const float* up, int64_t n, float* y) const override {
    ref_cpu_backend().silu_mul(gate, up, n, y);
  }
  void embedding(const int32_t* ids, int64_t m, const float* table, int64_t vocab, int64_t d,
                 float* y) const override {
    ref_cpu_backend().embedding(ids, m, table, vocab, d, y);
  }
  void add(const float* a, const float* b, int64_t n, float* y) const override { ref_cpu_backend().add(a, b, n, y); }
};
}  // namespace

}  // namespace qs::backends::cpu

namespace qs::backends {
const Backend& cpu_backend() {
  static const cpu::CpuBackend b;
  return b;
}
}  // namespace qs::backends
