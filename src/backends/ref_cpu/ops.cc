// Reference CPU implementation of the FP32 backend ops (see ops.h for the precision policy).
#include "backends/ref_cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qs::backends::ref_cpu {

double dot(const float* a, const float* b, int64_t k) {
  constexpr int kLanes = 8, kBlock = 64;
  double total = 0.0;
  int64_t j = 0;
  for (; j + kBlock <= k; j += kBlock) {
    float lane[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int t = 0; t < kBlock; t += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] += a[j + t + l] * b[j + t + l];
    double s = 0.0;
    for (int l = 0; l < kLanes; ++l) s += double(lane[l]);
    total += s;
  }
  for (; j < k; ++j) total += double(a[j]) * double(b[j]);
  return total;
}

void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n, float* y) {
  QS_CHECK(m >= 0 && k > 0 && n > 0) << "linear: bad shape m=" << m << " k=" << k << " n=" << n;
  // Parallel over output features; within a chunk, blocks of 32 weight rows stay in cache while every input row
  // streams past. Each y[i, o] is one dot() call: independent of chunking and of m.
  constexpr int64_t kTile = 32;
  parallel_for(
      n,
      [&](int64_t o0, int64_t o1) {
        for (int64_t ob = o0; ob < o1; ob += kTile) {
          const int64_t oe = std::min(o1, ob + kTile);
          for (int64_t i = 0; i < m; ++i) {
            const float* xi = x + i * k;
            float* yi = y + i * n;
            for (int64_t o = ob; o < oe; ++o) {
              double acc = dot(xi, w + o * k, k);
              if (bias) acc += double(bias[o]);
              yi[o] = float(acc);
            }
          }
        }
      },
      kTile);
}

void rmsnorm(const float* x, const float* w, int64_t m, int64_t d, double eps, float* y) {
  QS_CHECK(m >= 0 && d > 0) << "rmsnorm: bad shape m=" << m << " d=" << d;
  parallel_for(m, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* xi = x + i * d;
      float* yi = y + i * d;
      double ss = 0.0;
      for (int64_t j = 0; j < d; ++j) ss += double(xi[j]) * double(xi[j]);
      const double inv = 1.0 / std::sqrt(ss / double(d) + eps);
      for (int64_t j = 0; j < d; ++j) yi[j] = float(double(xi[j]) * inv * double(w[j]));
    }
  });
}

void rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, const int64_t* positions,
          const double* inv_freq) {
  QS_CHECK(head_dim > 0 && head_dim % 2 == 0) << "rope: head_dim must be even, got " << head_dim;
  const int64_t half = head_dim / 2;
  parallel_for(m, [&](int64_t i0, int64_t i1) {
    std::vector<double> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        const double ang = double(positions[i]) * inv_freq[j];
        c[size_t(j)] = std::cos(ang);
        s[size_t(j)] = std::sin(ang);
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        float* v = x + (i * num_heads + h) * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          const double a = v[j], b = v[j + half];
          v[j] = float(a * c[size_t(j)] - b * s[size_t(j)]);
          v[j + half] = float(b * c[size_t(j)] + a * s[size_t(j)]);
        }
      }
    }
  });
}

void check_attention_args(const AttentionArgs& a) {
  QS_CHECK(a.num_heads > 0 && a.num_kv_heads > 0 && a.num_heads % a.num_kv_heads == 0)
      << "attention: num_heads " << a.num_heads << " is not a multiple of num_kv_heads " << a.num_kv_heads;
  QS_CHECK(a.head_dim > 0 && a.m >= 0 && a.q_pos0 >= 0 && a.q_pos0 + a.m <= a.kv_len)
      << "attention: queries at positions " << a.q_pos0 << ".." << a.q_pos0 + a.m - 1 << " need keys up to there, "
      << "kv_len is " << a.kv_len;
}

void attention(const AttentionArgs& a) {
  check_attention_args(a);
  const int64_t group = a.num_heads / a.num_kv_heads, d = a.head_dim;
  parallel_for(a.m * a.num_heads, [&](int64_t t0, int64_t t1) {
    std::vector<double> p(static_cast<size_t>(a.kv_len)), acc(static_cast<size_t>(d));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / a.num_heads, h = t % a.num_heads, kvh = h / group;
      const int64_t pos = a.q_pos0 + i;
      const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos - a.sliding_window + 1) : 0;
      const float* q = a.q + (i * a.num_heads + h) * d;
      double mx = -INFINITY;
      for (int64_t j = lo; j <= pos; ++j) {
        const float* kj = a.k + (j * a.num_kv_heads + kvh) * d;
        double s = 0.0;
        for (int64_t e = 0; e < d; ++e) s += double(q[e]) * double(kj[e]);
        s *= a.scale;
        p[size_t(j)] = s;
        mx = std::max(mx, s);
      }
      double denom = 0.0;
      for (int64_t j = lo; j <= pos; ++j) {
        p[size_t(j)] = std::exp(p[size_t(j)] - mx);
        denom += p[size_t(j)];
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = lo; j <= pos; ++j) {
        const float* vj = a.v + (j * a.num_kv_heads + kvh) * d;
        const double pj = p[size_t(j)];
        for (int64_t e = 0; e < d; ++e) acc[size_t(e)] += pj * double(vj[e]);
      }
      float* out = a.out + (i * a.num_heads + h) * d;
      for (int64_t e = 0; e < d; ++e) out[e] = float(acc[size_t(e)] / denom);
    }
  });
}

void silu_mul(const float* gate, const float* up, int64_t n, float* y) {
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const double g = gate[i];
          y[i] = float(g / (1.0 + std::exp(-g)) * double(up[i]));
        }
      },
      4096);
}

void embedding(const int32_t* ids, int64_t m, const float* table, int64_t vocab, int64_t d, float* y) {
  for (int64_t i = 0; i < m; ++i)
    QS_CHECK(ids[i] >= 0 && ids[i] < vocab) << "token id " << ids[i] << " at index " << i
                                             << " is outside the vocabulary [0, " << vocab << ")";
  for (int64_t i = 0; i < m; ++i) std::copy(table + int64_t(ids[i]) * d, table + (int64_t(ids[i]) + 1) * d, y + i * d);
}

void add(const float* a, const float* b, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

namespace {
class RefCpuBackend final : public Backend {
 public:
  std::string name() const override { return "ref_cpu"; }
  void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n,
              float* y) const override {
    ref_cpu::linear(x, w, bias, m, k, n, y);
  }
  void rmsnorm(const float* x, const float* w, int64_t m, int64_t d, double eps, float* y) const override {
    ref_cpu::rmsnorm(x, w, m, d, eps, y);
  }
  void rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, const int64_t* positions,
            const double* inv_freq) const override {
    ref_cpu::rope(x, m, num_heads, head_dim, positions, inv_freq);
  }
  void attention(const AttentionArgs& a) const override { ref_cpu::attention(a); }
  void silu_mul(const float* gate, const float* up, int64_t n, float* y) const override {
    ref_cpu::silu_mul(gate, up, n, y);
  }
  void embedding(const int32_t* ids, int64_t m, const float* table, int64_t vocab, int64_t d,
                 float* y) const override {
    ref_cpu::embedding(ids, m, table, vocab, d, y);
  }
  void add(const float* a, const float* b, int64_t n, float* y) const override { ref_cpu::add(a, b, n, y); }
};
}  // namespace

}  // namespace qs::backends::ref_cpu

namespace qs::backends {
const Backend& ref_cpu_backend() {
  static const ref_cpu::RefCpuBackend b;
  return b;
}
}  // namespace qs::backends
