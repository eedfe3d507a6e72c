// The quantizers of quant/weight_quant.h feed the exact integer GEMM reference (backends/ref_cpu/gemm_w4a8.h)
// correctly: for every variant, the GEMM output equals the FP64 matmul of the dequantized activations with the
// quantizer's own dequantized weights, up to the FP32 epilogue (and, per-channel, the FP16 activation sum).
#include <gtest/gtest.h>

#include <cmath>

#include "backends/ref_cpu/gemm_w4a8.h"
#include "common/test_util.h"
#include "quant/weight_quant.h"

namespace qs::quant {
namespace {

struct Acts {
  std::vector<int8_t> q;
  std::vector<uint16_t> scale, sum;
};

Acts quantize_acts(const std::vector<float>& x, int64_t m, int64_t k) {
  Acts a{std::vector<int8_t>(size_t(m * k)), std::vector<uint16_t>(size_t(m)), std::vector<uint16_t>(size_t(m))};
  for (int64_t i = 0; i < m; ++i) {
    const fmt4::ActQuantRow r = fmt4::quantize_act_row(x.data() + i * k, k, a.q.data() + i * k);
    a.scale[size_t(i)] = r.scale;
    a.sum[size_t(i)] = r.sum;
  }
  return a;
}

// Checks y against sum_k deq(x)[m,k] * deq(w)[n,k] (FP64). Tolerance: the FP32 epilogue (a few ulps of the
// products' magnitude, 1e-5 relative of sum |terms|) plus, per-channel, |sz| * |xsum| * 2^-11 for the FP16
// rounding of the activation sum.
void expect_matches(const std::vector<float>& y, const Acts& a, const Tensor& deq, int64_t m, const uint16_t* szero) {
  const int64_t n = deq.dim(0), k = deq.dim(1);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0, mag = 0;
      const double sx = fp16_to_float(a.scale[size_t(i)]);
      for (int64_t t = 0; t < k; ++t) {
        const double p = a.q[size_t(i * k + t)] * sx * deq.data<float>()[j * k + t];
        ref += p;
        mag += std::fabs(p);
      }
      double tol = 1e-5 * mag + 1e-30;
      if (szero) tol += std::fabs(fp16_to_float(szero[j])) * std::fabs(fp16_to_float(a.sum[size_t(i)])) / 2048.0;
      ASSERT_NEAR(y[size_t(i * n + j)], ref, tol) << "m " << i << " n " << j;
    }
}

TEST(QuantizedGemm, QuantizerOutputsFeedTheIntegerReference) {
  const int64_t m = 5, n = 67, k = 384;
  const std::vector<float> wv = test::random_normal(size_t(n * k), 1, 0.05f);
  const Tensor w = Tensor::from_floats({n, k}, wv.data());
  const std::vector<float> x = test::random_normal(size_t(m * k), 2, 1.0f);
  const Acts a = quantize_acts(x, m, k);
  ref_cpu::QGemmActs qa;
  qa.m = m;
  qa.q = a.q.data();
  qa.scale = a.scale.data();
  qa.sum = a.sum.data();
  std::vector<float> y(size_t(m * n), NAN);
  {
    const W4PerChannelWeight q = quantize_w4_per_channel(w);
    ref_cpu::QGemmWeights qw;
    qw.variant = WeightFormat::kW4A8PerChannel;
    qw.n = n;
    qw.k = k;
    qw.q = q.qweight.data<uint8_t>();
    qw.scale = q.scale.data<uint16_t>();
    qw.szero = q.szero.data<uint16_t>();
    ref_cpu::qgemm(qw, qa, {}, y.data());
    expect_matches(y, a, q.dequant, m, q.szero.data<uint16_t>());
  }
  {
    const W4G128Weight q = quantize_w4_g128(w);
    ref_cpu::QGemmWeights qw;
    qw.variant = WeightFormat::kW4A8G128;
    qw.n = n;
    qw.k = k;
    qw.q = q.qweight.data<uint8_t>();
    qw.scale = q.s1.data<uint16_t>();
    qw.s2 = q.s2.data<uint8_t>();
    qw.zn = q.zn.data<int8_t>();
    std::fill(y.begin(), y.end(), NAN);
    ref_cpu::qgemm(qw, qa, {}, y.data());
    expect_matches(y, a, q.dequant, m, nullptr);
  }
  {
    const Int8ChannelWeight q = quantize_int8_per_channel(w);
    ref_cpu::QGemmWeights qw;
    qw.variant = WeightFormat::kW8A8;
    qw.n = n;
    qw.k = k;
    qw.q = reinterpret_cast<const uint8_t*>(q.qweight.data<int8_t>());
    qw.scale = q.scale.data<uint16_t>();
    std::fill(y.begin(), y.end(), NAN);
    ref_cpu::qgemm(qw, qa, {}, y.data());
    expect_matches(y, a, q.dequant, m, nullptr);
  }
}

}  // namespace
}  // namespace qs::quant
