// Tests of GPTQ and its parts (quant/gptq.h): the Hessian accumulation, the inverse-Hessian Cholesky factor,
// GPTQ == RTN exactly for an identity Hessian, GPTQ < RTN in output error on correlated inputs (both formats),
// packed results that dequantize to GPTQ's own output bit for bit, dead inputs, the clipping search, bad input.
#include "quant/gptq.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/test_util.h"
#include "core/error.h"

namespace qs::quant {
namespace {

using ::testing::HasSubstr;

using ::qs::test::error_of;

Tensor random_weight(int64_t n, int64_t k, uint64_t seed) {
  const std::vector<float> v = test::random_normal(size_t(n * k), seed, 0.05f);
  return Tensor::from_floats({n, k}, v.data());
}

// Correlated calibration inputs: x_t = a_t * u + 0.5 * (z_t smoothed over neighbouring channels) + per-channel
// scales from 0.2 to 3, the kind of structure GPTQ exploits.
std::vector<float> correlated_inputs(int64_t m, int64_t k, uint64_t seed) {
  const std::vector<float> z = test::random_normal(size_t(m * k), seed);
  const std::vector<float> a = test::random_normal(size_t(m), seed + 1);
  const std::vector<float> u = test::random_normal(size_t(k), seed + 2);
  std::vector<float> x(size_t(m * k));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const float zs = z[size_t(t * k + j)] + (j > 0 ? 0.8f * z[size_t(t * k + j - 1)] : 0.0f);
      x[size_t(t * k + j)] = (a[size_t(t)] * u[size_t(j)] + 0.5f * zs) * (0.2f + 2.8f * float(j % 7) / 6.0f);
    }
  return x;
}

// sum over tokens and outputs of (x_t . (w_n - q_n))^2, in double.
double output_error(const std::vector<float>& x, int64_t m, const Tensor& w, const Tensor& q) {
  const int64_t n = w.dim(0), k = w.dim(1);
  double total = 0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t t = 0; t < m; ++t) {
      double dot = 0;
      for (int64_t j = 0; j < k; ++j)
        dot += double(x[size_t(t * k + j)]) * (double(w.data<float>()[r * k + j]) - q.data<float>()[r * k + j]);
      total += dot * dot;
    }
  return total;
}

void expect_same_bits(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << a.desc();
}

TEST(Hessian, EqualsTwoXtXOverN) {
  const int64_t k = 17;
  const std::vector<float> x = test::random_normal(size_t(8 * k), 3);
  HessianAccumulator acc(k);
  acc.add(x.data(), 3);
  acc.add(x.data() + 3 * k, 5);
  EXPECT_EQ(acc.tokens(), 8);
  const std::vector<double> h = acc.hessian();
  // FP32 partial sums of at most 256 products (one rounding per product and per add): error below
  // 2 * 256 * 2^-24 < 4e-5 of sum |x_ti x_tj| (here 8 products: far less).
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double ref = 0, mag = 0;
      for (int64_t t = 0; t < 8; ++t) {
        ref += double(x[size_t(t * k + i)]) * x[size_t(t * k + j)];
        mag += std::fabs(double(x[size_t(t * k + i)]) * x[size_t(t * k + j)]);
      }
      ASSERT_NEAR(h[size_t(i * k + j)], 2.0 * ref / 8.0, 4e-5 * 2.0 * mag / 8.0);
      ASSERT_EQ(h[size_t(i * k + j)], h[size_t(j * k + i)]);
    }
  EXPECT_THAT(error_of([] { HessianAccumulator(4).hessian(); }), HasSubstr("no calibration inputs"));
  // More tokens than one FP32 chunk, a K wider than one tile: still 2/n X^T X.
  const int64_t k2 = 600, m2 = 700;
  const std::vector<float> x2 = test::random_normal(size_t(m2 * k2), 4);
  HessianAccumulator acc2(k2);
  acc2.add(x2.data(), m2);
  const std::vector<double> h2 = acc2.hessian();
  for (int64_t i : {0, 17, 255, 599})
    for (int64_t j : {0, 1, 300, 511, 512, 599}) {
      double ref = 0, mag = 0;
      for (int64_t t = 0; t < m2; ++t) {
        const double p = double(x2[size_t(t * k2 + i)]) * x2[size_t(t * k2 + j)];
        ref += p;
        mag += std::fabs(p);
      }
      ASSERT_NEAR(h2[size_t(i * k2 + j)], 2.0 * ref / m2, 4e-5 * 2.0 * mag / m2) << i << ", " << j;
    }
}

TEST(Gptq, InverseHessianFactor) {
  const int64_t k = 67;
  const std::vector<float> x = correlated_inputs(200, k, 5);
  HessianAccumulator acc(k);
  acc.add(x.data(), 200);
  std::vector<double> h = acc.hessian();
  const std::vector<double> u = gptq_inverse_hessian_factor(h, k, 0.01);
  double mean = 0;
  for (int64_t i = 0; i < k; ++i) mean += h[size_t(i * k + i)] / k;
  for (int64_t i = 0; i < k; ++i) h[size_t(i * k + i)] += 0.01 * mean;
  // (U^T U) H = I; U upper triangular.
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < i; ++j) ASSERT_EQ(u[size_t(i * k + j)], 0.0);
  double worst = 0;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t a = 0; a < k; ++a) {
        double hinv_ia = 0;
        for (int64_t t = 0; t <= std::min(i, a); ++t) hinv_ia += u[size_t(t * k + i)] * u[size_t(t * k + a)];
        s += hinv_ia * h[size_t(a * k + j)];
      }
      worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
    }
  EXPECT_LT(worst, 1e-9);
  std::vector<double> bad(size_t(4), 0.0);
  bad[0] = 1;
  bad[3] = -50;
  EXPECT_THAT(error_of([&] { gptq_inverse_hessian_factor(bad, 2, 0.01); }), HasSubstr("not positive definite"));
}

std::vector<double> identity(int64_t k) {
  std::vector<double> h(size_t(k * k), 0.0);
  for (int64_t i = 0; i < k; ++i) h[size_t(i * k + i)] = 1.0;
  return h;
}

TEST(Gptq, IdentityHessianEqualsRtnExactly) {
  {
    const Tensor w = random_weight(17, 130, 21);  // K not a multiple of the block
    const std::vector<float> clip = test::random_normal(17, 4);
    std::vector<float> ratios;
    for (float c : clip) ratios.push_back(std::clamp(0.9f + 0.05f * c, 0.2f, 1.0f));
    const W4PerChannelWeight g = gptq_w4_per_channel(w, identity(130), ratios);
    const W4PerChannelWeight r = quantize_w4_per_channel(w, ratios);
    expect_same_bits(g.qweight, r.qweight);
    expect_same_bits(g.scale, r.scale);
    expect_same_bits(g.szero, r.szero);
    expect_same_bits(g.dequant, r.dequant);
  }
  {
    const Tensor w = random_weight(5, 384, 22);
    const W4G128Weight g = gptq_w4_g128(w, identity(384));
    const W4G128Weight r = quantize_w4_g128(w);
    expect_same_bits(g.qweight, r.qweight);
    expect_same_bits(g.s1, r.s1);
    expect_same_bits(g.s2, r.s2);
    expect_same_bits(g.zn, r.zn);
    expect_same_bits(g.dequant, r.dequant);
  }
}

// On correlated inputs GPTQ's output error must be far below RTN's (observed ratios 0.1-0.2 on these inputs,
// which share a strong common factor); the bound 0.5 leaves room for seeds and fails for a GPTQ that does
// nothing or updates with the wrong sign.
TEST(Gptq, BeatsRtnOnCorrelatedInputs) {
  const int64_t m = 512;
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{3, 256}, {33, 384}}) {
    const std::vector<float> x = correlated_inputs(m, k, uint64_t(k));
    HessianAccumulator acc(k);
    acc.add(x.data(), m);
    const std::vector<double> h = acc.hessian();
    const Tensor w = random_weight(n, k, uint64_t(n + k));

    const W4PerChannelWeight gp = gptq_w4_per_channel(w, h);
    expect_same_bits(dequantize(gp), gp.dequant);
    const double e_gp = output_error(x, m, w, gp.dequant);
    const double e_rp = output_error(x, m, w, quantize_w4_per_channel(w).dequant);
    EXPECT_LT(e_gp, 0.5 * e_rp) << "per-channel " << n << "x" << k;

    const W4G128Weight gg = gptq_w4_g128(w, h);
    expect_same_bits(dequantize(gg), gg.dequant);
    const double e_gg = output_error(x, m, w, gg.dequant);
    const double e_rg = output_error(x, m, w, quantize_w4_g128(w).dequant);
    EXPECT_LT(e_gg, 0.5 * e_rg) << "g128 " << n << "x" << k;
    std::printf("%ldx%ld GPTQ/RTN output error: per-channel %.3f, g128 %.3f\n", long(n), long(k), e_gp / e_rp,
                e_gg / e_rg);
    // GPTQ's g128 codes obey the same overflow guarantees as RTN's.
    const std::vector<uint8_t> codes = unpack_u4(gg.qweight);
    for (int64_t i = 0; i < n * k; ++i) {
      const int64_t gi = (i / k) * (k / 128) + (i % k) / 128;
      const int s2 = gg.s2.data<uint8_t>()[gi], zn = gg.zn.data<int8_t>()[gi];
      const int true8 = codes[size_t(i)] * s2 + zn;
      ASSERT_LE(codes[size_t(i)] * s2, 255);
      ASSERT_TRUE(true8 >= -128 && true8 <= 127) << true8;
    }
  }
}

// A plain asymmetric INT4 per-row rounding for the comparisons below (parameters from the original row).
class TestRounding : public GptqRounding {
 public:
  TestRounding(int64_t n, int64_t k) : k_(k), scale_(size_t(n)), zero_(size_t(n)), codes_(size_t(n * k)) {}
  int64_t group_size() const override { return 0; }
  void set_group(int64_t row, int64_t, const float* w, int64_t len) override {
    float lo = 0, hi = 0;
    for (int64_t i = 0; i < len; ++i) lo = std::min(lo, w[i]), hi = std::max(hi, w[i]);
    scale_[size_t(row)] = std::max(hi - lo, 1e-8f) / 15.0f;
    zero_[size_t(row)] = std::round(-lo / scale_[size_t(row)]);
  }
  float round(int64_t row, int64_t col, float w) override {
    const float s = scale_[size_t(row)], z = zero_[size_t(row)];
    const float q = std::clamp(std::round(w / s) + z, 0.0f, 15.0f);
    codes_[size_t(row * k_ + col)] = uint8_t(q);
    return (q - z) * s;
  }
  const std::vector<uint8_t>& codes() const { return codes_; }

 private:
  int64_t k_;
  std::vector<float> scale_, zero_;
  std::vector<uint8_t> codes_;
};

// The textbook, unblocked GPTQ (Frantar et al., Algorithm 1 without lazy batching), in double: column by column,
// quantize, then spread the error over the remaining columns through the upper Cholesky factor of H^-1.
Tensor naive_gptq(const Tensor& w, const std::vector<double>& h, TestRounding& r) {
  const int64_t n = w.dim(0), k = w.dim(1);
  const std::vector<double> u = gptq_inverse_hessian_factor(h, k, 0.01);
  std::vector<double> wd(size_t(n * k));
  for (int64_t i = 0; i < n * k; ++i) wd[size_t(i)] = w.data<float>()[i];
  Tensor q(DType::F32, {n, k});
  for (int64_t row = 0; row < n; ++row) r.set_group(row, 0, w.data<float>() + row * k, k);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t row = 0; row < n; ++row) {
      double* wr = wd.data() + row * k;
      const float qv = r.round(row, j, float(wr[j]));
      q.data<float>()[row * k + j] = qv;
      const double err = (wr[j] - qv) / u[size_t(j * k + j)];
      for (int64_t c = j + 1; c < k; ++c) wr[c] -= err * u[size_t(j * k + c)];
    }
  return q;
}

double code_agreement(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  size_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return double(same) / double(a.size());
}

// Issue 13 (test audit): GPTQ was only checked by "error < 0.5x RTN". Here the blocked, lazy-batch implementation
// must reproduce the unblocked textbook algorithm, and block sizes 32 / 128 / K must agree. The running weights
// are FP32 in the library and double here, so an update could round a code the other way in a rare tie: bounds are
// >= 99.5% identical codes and output errors within 0.5% (measured: 100% identical, ratio 1.0000 for all three). Negative control: RTN (GPTQ with no error feedback) agrees
// with the textbook result on far fewer codes and has a much larger error, so the comparison can fail.
TEST(Gptq, EqualsNaiveUnblockedGptqForEveryBlockSize) {
  const int64_t n = 24, k = 256, m = 512;
  const std::vector<float> x = correlated_inputs(m, k, 77);
  HessianAccumulator acc(k);
  acc.add(x.data(), m);
  const std::vector<double> h = acc.hessian();
  const Tensor w = random_weight(n, k, 78);
  TestRounding rn(n, k);
  const Tensor qn = naive_gptq(w, h, rn);
  const double e_naive = output_error(x, m, w, qn);
  for (int64_t bs : {int64_t(32), int64_t(128), k}) {
    TestRounding rb(n, k);
    const Tensor qb = gptq(w, h, rb, {.damp = 0.01, .block_size = bs});
    const double agree = code_agreement(rb.codes(), rn.codes());
    const double e = output_error(x, m, w, qb);
    std::printf("block %ld: %.4f of codes equal to the naive GPTQ, output error ratio %.4f\n", long(bs), agree,
                e / e_naive);
    EXPECT_GE(agree, 0.995) << "block size " << bs;
    EXPECT_NEAR(e / e_naive, 1.0, 0.005) << "block size " << bs;
  }
  // Negative control: plain rounding with the same parameters.
  TestRounding rr(n, k);
  Tensor qr(DType::F32, {n, k});
  for (int64_t row = 0; row < n; ++row) {
    rr.set_group(row, 0, w.data<float>() + row * k, k);
    for (int64_t j = 0; j < k; ++j) qr.data<float>()[row * k + j] = rr.round(row, j, w.data<float>()[row * k + j]);
  }
  std::printf("RTN: %.4f of codes equal, output error ratio %.3f\n", code_agreement(rr.codes(), rn.codes()),
              output_error(x, m, w, qr) / e_naive);
  EXPECT_LT(code_agreement(rr.codes(), rn.codes()), 0.9);
  EXPECT_GT(output_error(x, m, w, qr), 1.5 * e_naive);
}

TEST(Gptq, DeadInputsAndBadInput) {
  const int64_t k = 256, m = 300;
  std::vector<float> x = correlated_inputs(m, k, 9);
  for (int64_t t = 0; t < m; ++t) x[size_t(t * k + 5)] = 0.0f;  // input 5 never active
  HessianAccumulator acc(k);
  acc.add(x.data(), m);
  const std::vector<double> h = acc.hessian();
  const Tensor w = random_weight(4, k, 10);
  const W4G128Weight g = gptq_w4_g128(w, h);
  for (int64_t i = 0; i < g.dequant.numel(); ++i) ASSERT_TRUE(std::isfinite(g.dequant.data<float>()[i]));
  for (int64_t r = 0; r < 4; ++r) EXPECT_EQ(g.dequant.data<float>()[r * k + 5], 0.0f);

  EXPECT_THAT(error_of([&] { gptq_w4_g128(w, identity(128)); }), HasSubstr("Hessian has 16384 entries"));
  EXPECT_THAT(error_of([&] { gptq_w4_g128(random_weight(2, 130, 1), identity(130)); }),
              HasSubstr("not a multiple of the group size"));
  EXPECT_THAT(error_of([&] { gptq_w4_per_channel(w, h, {1.0f}); }), HasSubstr("1 clip ratios for 4 channels"));
  GptqOptions opt;
  opt.block_size = 96;  // 128-groups do not fit 96-column blocks
  EXPECT_THAT(error_of([&] { gptq_w4_g128(w, h, kProtectiveRange, opt); }), HasSubstr("must divide the block size"));
}

// Clipping: every chosen ratio is a candidate, never worse than no clipping for its channel, and on heavy-tailed
// rows the search does clip. The Hessian factor gives the same choice as the tokens it came from.
TEST(ClipSearch, MinimizesOutputError) {
  const int64_t n = 12, k = 64, m = 256;
  const std::vector<float> x = correlated_inputs(m, k, 31);
  Tensor w = random_weight(n, k, 32);
  for (int64_t r = 0; r < n; r += 2) w.data<float>()[r * k + (r * 5) % k] = 0.6f;  // one outlier per even row
  const std::vector<float> ratios = search_clip_ratios(w, x.data(), m);
  ASSERT_EQ(ratios.size(), size_t(n));
  int clipped = 0;
  for (int64_t r = 0; r < n; ++r) {
    const float q = ratios[size_t(r)];
    ASSERT_GE(q, 0.2f);
    ASSERT_LE(q, 1.0f);
    EXPECT_NEAR(q * 100.0f, std::round(q * 100.0f), 1e-3) << "not on the 0.01 grid";
    clipped += q < 1.0f;
    // Row r's error with its ratio vs ratio 1.
    auto row_err = [&](float ratio) {
      const W4ChannelParams p = w4_channel_params(w.data<float>() + r * k, k, ratio);
      double tot = 0;
      for (int64_t t = 0; t < m; ++t) {
        double dot = 0;
        for (int64_t j = 0; j < k; ++j) {
          const float v = w.data<float>()[r * k + j];
          dot += double(x[size_t(t * k + j)]) * (v - w4_channel_dequant(w4_channel_quantize(v, p), p));
        }
        tot += dot * dot;
      }
      return tot;
    };
    EXPECT_LE(row_err(q), row_err(1.0f) * (1 + 1e-5)) << "row " << r;
  }
  EXPECT_GE(clipped, n / 2) << "outlier rows should be clipped";
  HessianAccumulator acc(k);
  acc.add(x.data(), m);
  const std::vector<float> lt = clip_search_factor_from_hessian(acc.hessian(), k);
  const std::vector<float> via_h = search_clip_ratios(w, lt.data(), k);
  int same = 0;
  for (int64_t r = 0; r < n; ++r) same += std::fabs(via_h[size_t(r)] - ratios[size_t(r)]) <= 0.011f;
  EXPECT_GE(same, n - 1);  // FP32 ties between neighbouring ratios may flip one
  EXPECT_THAT(error_of([&] { search_clip_ratios(w, x.data(), 0); }), HasSubstr("no calibration rows"));
}

}  // namespace
}  // namespace qs::quant
