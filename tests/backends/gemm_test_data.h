// Random quantized GEMM problems for the gemm tests (CPU reference tests and GPU tests): canonical-layout
// weights of each variant (g128 level-2 scales/zeros drawn inside the protective range so the INT8
// dequantization never overflows, including byte wraparound cases), per-token INT8 activations quantized with
// formats.h from random normal inputs, and optional FP16 bias/residual. Deterministic in the seed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "backends/ref_cpu/gemm_w4a8.h"
#include "common/test_util.h"
#include "core/dtype.h"
#include "formats/formats.h"

namespace qs::test {

struct QGemmProblem {
  WeightFormat variant;
  int64_t m, n, k;
  std::vector<uint8_t> q;  // packed W4 [n, k/2] or INT8 [n, k]
  std::vector<uint16_t> scale, szero;
  std::vector<uint8_t> s2;
  std::vector<int8_t> zn;
  std::vector<int8_t> xq;
  std::vector<uint16_t> sx, xsum;
  std::vector<int32_t> qsum;  // g128 only: the exact sum of each row's codes
  std::vector<uint16_t> bias, residual;

  ref_cpu::QGemmWeights weights() const {
    ref_cpu::QGemmWeights w;
    w.variant = variant;
    w.n = n;
    w.k = k;
    w.q = q.data();
    w.scale = scale.data();
    w.szero = szero.empty() ? nullptr : szero.data();
    w.s2 = s2.empty() ? nullptr : s2.data();
    w.zn = zn.empty() ? nullptr : zn.data();
    return w;
  }
  ref_cpu::QGemmActs acts() const { return {m, xq.data(), sx.data(), xsum.empty() ? nullptr : xsum.data()}; }
  ref_cpu::QGemmEpilogue epilogue() const {
    return {bias.empty() ? nullptr : bias.data(), residual.empty() ? nullptr : residual.data()};
  }
};

inline QGemmProblem make_qgemm_problem(WeightFormat v, int64_t m, int64_t n, int64_t k, uint64_t seed,
                                       bool with_bias = false, bool with_residual = false) {
  QGemmProblem p{v, m, n, k, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto fp16u = [&](float lo, float hi) { return float_to_fp16(std::uniform_real_distribution<float>(lo, hi)(rng)); };
  const bool w4 = v != WeightFormat::kW8A8;
  p.q.resize(size_t(w4 ? n * k / 2 : n * k));
  for (auto& b : p.q) b = uint8_t(w4 ? uni(0, 255) : uint8_t(int8_t(uni(-127, 127))));
  p.scale.resize(size_t(n));
  for (auto& s : p.scale) s = fp16u(0.5e-3f, 2e-3f);
  if (v == WeightFormat::kW4A8PerChannel) {
    p.szero.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i)
      p.szero[size_t(i)] = float_to_fp16(float(uni(0, 15)) * fp16_to_float(p.scale[size_t(i)]));
  }
  if (v == WeightFormat::kW4A8G128) {
    const int64_t ng = n * (k / fmt4::kGroupSize);
    p.s2.resize(size_t(ng));
    p.zn.resize(size_t(ng));
    for (int64_t g = 0; g < ng; ++g) {
      const int s2 = uni(1, 16);  // q4*s2 <= 240 fits a byte
      const int z = uni(std::max(0, 15 - 127 / s2), std::min(15, 128 / s2));  // result within [-128, 127]
      p.s2[size_t(g)] = uint8_t(s2);
      p.zn[size_t(g)] = int8_t(-z * s2);
    }
  }
  const std::vector<float> x = random_normal(size_t(m * k), seed ^ 0x9e3779b97f4a7c15ull);
  p.xq.resize(size_t(m * k));
  p.sx.resize(size_t(m));
  p.xsum.resize(size_t(m));
  p.qsum.resize(size_t(m));
  for (int64_t i = 0; i < m; ++i) {
    const fmt4::ActQuantRow r = fmt4::quantize_act_row(x.data() + i * k, k, p.xq.data() + i * k);
    p.sx[size_t(i)] = r.scale;
    p.xsum[size_t(i)] = r.sum;
    p.qsum[size_t(i)] = r.qsum;
  }
  if (v != WeightFormat::kW4A8PerChannel) p.xsum.clear();
  if (v != WeightFormat::kW4A8G128) p.qsum.clear();
  if (with_bias) {
    p.bias.resize(size_t(n));
    for (auto& b : p.bias) b = fp16u(-1.0f, 1.0f);
  }
  if (with_residual) {
    p.residual.resize(size_t(m * n));
    for (auto& r : p.residual) r = fp16u(-2.0f, 2.0f);
  }
  return p;
}

}  // namespace qs::test
