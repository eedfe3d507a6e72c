// Tests of the offline weight quantizers (quant/weight_quant.h): bit-exact 4-bit packing, dequantized
// references equal to what the stored form dequantizes to through formats.h, nearest-level rounding and the
// documented error bounds, awkward shapes, and errors for bad input.
#include "quant/weight_quant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "common/test_util.h"
#include "io/safetensors.h"

namespace qs::quant {
namespace {

using ::testing::HasSubstr;

Tensor random_weight(int64_t n, int64_t k, uint64_t seed, float stddev = 0.02f) {
  const std::vector<float> v = test::random_normal(size_t(n * k), seed, stddev);
  return Tensor::from_floats({n, k}, v.data());
}

void expect_same_bits(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.shape(), b.shape());
  ASSERT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
}

using ::qs::test::error_of;

TEST(Pack, RoundTripBitExactAwkwardShapes) {
  std::mt19937 rng(7);
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {3, 6}, {17, 258}, {67, 130}}) {
    std::vector<uint8_t> codes(size_t(n * k));
    for (auto& c : codes) c = uint8_t(rng() & 15);
    const Tensor packed = pack_u4(codes.data(), n, k);
    ASSERT_EQ(packed.shape(), (Shape{n, k / 2}));
    EXPECT_EQ(unpack_u4(packed), codes) << n << "x" << k;
  }
}

TEST(Pack, CanonicalNibbleOrder) {
  const uint8_t codes[4] = {0x1, 0xa, 0xf, 0x3};  // element 2j low nibble, 2j+1 high nibble
  const Tensor packed = pack_u4(codes, 1, 4);
  EXPECT_EQ(packed.data<uint8_t>()[0], 0xa1);
  EXPECT_EQ(packed.data<uint8_t>()[1], 0x3f);
}

TEST(Pack, RejectsBadInput) {
  const uint8_t codes[4] = {1, 2, 16, 3};
  EXPECT_THAT(error_of([&] { pack_u4(codes, 1, 4); }), HasSubstr("is not 4-bit"));
  EXPECT_THAT(error_of([&] { pack_u4(codes, 1, 3); }), HasSubstr("must be even"));
}

// Per-channel W4: q is the nearest of the 16 levels q*s - sz to the (clipped) weight, and the error inside the
// range is at most s/2 plus the FP16 rounding of s (15 s may fall short of the range by 15 * 2^-11 s) and of sz
// (2^-11 * 15 s): s * (0.5 + 30 * 2^-11).
TEST(W4PerChannel, NearestLevelAndBound) {
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {3, 130}, {17, 258}, {67, 512}}) {
    Tensor w = random_weight(n, k, uint64_t(n * 1000 + k));
    float* wp = w.data<float>();
    if (n > 2) {
      for (int64_t j = 0; j < k; ++j) wp[1 * k + j] = 0.0f;                    // all-zero row
      for (int64_t j = 0; j < k; ++j) wp[2 * k + j] = std::fabs(wp[2 * k + j]);  // all-positive row
    }
    const W4PerChannelWeight q = quantize_w4_per_channel(w);
    expect_same_bits(dequantize(q), q.dequant);
    const std::vector<uint8_t> codes = unpack_u4(q.qweight);
    const float* dq = q.dequant.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      const W4ChannelParams p{q.scale.data<uint16_t>()[i], q.szero.data<uint16_t>()[i], 0};
      const float s = fp16_to_float(p.scale);
      for (int64_t j = 0; j < k; ++j) {
        const float x = wp[i * k + j], e = std::fabs(x - dq[i * k + j]);
        ASSERT_LE(e, s * (0.5f + 30.0f / 2048.0f) + 1e-7f) << "row " << i << " col " << j;
        for (int l = 0; l < 16; ++l)
          ASSERT_LE(e, std::fabs(x - w4_channel_dequant(uint8_t(l), p)) * (1 + 1e-6f) + 1e-9f)
              << "level " << l << " is nearer than code " << int(codes[size_t(i * k + j)]);
      }
      if (n > 2 && i == 1) EXPECT_EQ(s, 0.0f);
    }
    // Honest overall error for a Gaussian row: about s/sqrt(12) per element, s ~ 6 sigma / 15.
    EXPECT_LT(test::normalized_error(q.dequant.data<float>(), wp, size_t(n * k)), 0.2) << n << "x" << k;
  }
}

TEST(W4PerChannel, ClipRatioShrinksRange) {
  const int64_t n = 5, k = 66;
  const Tensor w = random_weight(n, k, 11);
  const std::vector<float> ratios = {1.0f, 0.9f, 0.5f, 0.2f, 0.75f};
  const W4PerChannelWeight q = quantize_w4_per_channel(w, ratios);
  const W4PerChannelWeight full = quantize_w4_per_channel(w);
  expect_same_bits(dequantize(q), q.dequant);
  for (int64_t i = 0; i < n; ++i) {
    const W4ChannelParams p = w4_channel_params(w.data<float>() + i * k, k, ratios[size_t(i)]);
    EXPECT_EQ(p.scale, q.scale.data<uint16_t>()[i]);
    if (ratios[size_t(i)] < 1.0f) EXPECT_LT(fp16_to_float(p.scale), fp16_to_float(full.scale.data<uint16_t>()[i]));
    float mx = 0;
    for (int64_t j = 0; j < k; ++j) mx = std::max(mx, std::fabs(q.dequant.data<float>()[i * k + j]));
    float wmx = 0;
    for (int64_t j = 0; j < k; ++j) wmx = std::max(wmx, std::fabs(w.data<float>()[i * k + j]));
    EXPECT_LE(mx, wmx * ratios[size_t(i)] + fp16_to_float(p.scale)) << "row " << i;
  }
  EXPECT_THAT(error_of([&] { quantize_w4_per_channel(w, {1.0f}); }), HasSubstr("1 clip ratios for 5 channels"));
  EXPECT_THAT(error_of([&] { quantize_w4_per_channel(w, {1, 1, 0, 1, 1}); }), HasSubstr("outside (0, 1]"));
}

// g128: level 1 is the nearest integer to w / s1 within [-P, P]; level 2 is the nearest of the 16 levels
// (q4 - z) * s2 to the level-1 value clamped into the group range; every producible code stays clear of
// byte overflow so the GPU's wrapping byte arithmetic gives the true INT8.
TEST(W4G128, TwoLevelRoundingIsExactAndNearest) {
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 128}, {3, 256}, {17, 384}, {5, 1024}}) {
    Tensor w = random_weight(n, k, uint64_t(7 * n + k));
    float* wp = w.data<float>();
    for (int64_t j = 0; j < 128; ++j) wp[j] = 0.5f * std::fabs(wp[j]);  // first group: positive only
    if (k > 128) wp[200] = 0.3f;                                         // an outlier: small-range groups elsewhere
    const W4G128Weight q = quantize_w4_g128(w);
    EXPECT_EQ(q.protective_range, kProtectiveRange);
    expect_same_bits(dequantize(q), q.dequant);
    const std::vector<uint8_t> codes = unpack_u4(q.qweight);
    const int64_t ng = k / 128;
    for (int64_t i = 0; i < n; ++i) {
      const float s1 = fp16_to_float(q.s1.data<uint16_t>()[i]);
      for (int64_t gi = 0; gi < ng; ++gi) {
        const uint8_t s2 = q.s2.data<uint8_t>()[i * ng + gi];
        const int8_t zn = q.zn.data<int8_t>()[i * ng + gi];
        ASSERT_GE(s2, 1);
        ASSERT_EQ(-zn % s2, 0);
        const int z = -zn / s2;
        int mn = 0, mx = 0;
        std::vector<int> q8(128);
        for (int j = 0; j < 128; ++j) {
          const float x = wp[i * k + gi * 128 + j] / s1;
          q8[size_t(j)] = g128_level1_quantize(wp[i * k + gi * 128 + j], s1, kProtectiveRange);
          ASSERT_LE(std::abs(q8[size_t(j)]), kProtectiveRange);
          ASSERT_LE(std::fabs(x - float(q8[size_t(j)])), std::max(0.5f, std::fabs(x) - kProtectiveRange) + 1e-4f);
          mn = std::min(mn, q8[size_t(j)]);
          mx = std::max(mx, q8[size_t(j)]);
        }
        for (int j = 0; j < 128; ++j) {
          const int64_t idx = i * k + gi * 128 + j;
          const int q4 = codes[size_t(idx)];
          ASSERT_LE(q4 * s2, 255);
          const int true8 = (q4 - z) * s2;
          ASSERT_GE(true8, -128);
          ASSERT_LE(true8, 127);
          ASSERT_EQ(int(fmt4::dequant_w4_g128_to_int8(uint8_t(q4), s2, zn)), true8);
          ASSERT_EQ(q.dequant.data<float>()[idx], float(true8) * s1);
          const int v = q8[size_t(j)];  // already inside [min(mn,0), max(mx,0)]
          for (int l = 0; l < 16; ++l) ASSERT_LE(std::abs(v - true8), std::abs(v - (l - z) * s2)) << "level " << l;
        }
      }
    }
    EXPECT_LT(test::normalized_error(q.dequant.data<float>(), wp, size_t(n * k)), 0.2) << n << "x" << k;
  }
}

TEST(W4G128, GroupParamsMatchTheDocumentedRule) {
  const G128GroupParams a = g128_group_params(-119, 119);  // s2 = rne(238 / 15 = 15.87) = 16, z = rne(7.44) = 7
  EXPECT_EQ(a.s2, 16);
  EXPECT_EQ(a.zero, 7);
  EXPECT_EQ(a.zn, -112);
  const G128GroupParams b = g128_group_params(3, 40);  // 0 joins the range: [0, 40], s2 = rne(2.67) = 3, z = 0
  EXPECT_EQ(b.lo, 0);
  EXPECT_EQ(b.s2, 3);
  EXPECT_EQ(b.zero, 0);
  const G128GroupParams c = g128_group_params(0, 0);  // all zero: s2 = 1, code z reproduces 0
  EXPECT_EQ(c.s2, 1);
  EXPECT_EQ(int(g128_dequant_int8(g128_quantize(0, c), c)), 0);
  const G128GroupParams d = g128_group_params(-8, 0);  // rne(8/15) = 1, z = 8; ties: rne(-(-8)/1) exact
  EXPECT_EQ(d.s2, 1);
  EXPECT_EQ(d.zero, 8);
}

TEST(W4G128, RejectsBadInput) {
  EXPECT_THAT(error_of([] { quantize_w4_g128(random_weight(2, 130, 1)); }),
              HasSubstr("not a multiple of the group size 128"));
  EXPECT_THAT(error_of([] { quantize_w4_g128(random_weight(2, 128, 1), 0); }), HasSubstr("outside [1, 127]"));
  Tensor w = random_weight(2, 128, 1);
  w.data<float>()[130] = NAN;
  EXPECT_THAT(error_of([&] { quantize_w4_g128(w); }), HasSubstr("non-finite weight at row 1, column 2"));
  EXPECT_THAT(error_of([] { quantize_w4_per_channel(random_weight(2, 5, 1)); }), HasSubstr("must be even"));
  EXPECT_THAT(error_of([] { quantize_w4_per_channel(Tensor(DType::F16, {2, 4})); }),
              HasSubstr("expected an F32 [N, K] weight"));
}

// INT8 per channel: |w - q s| <= s/2 (absmax / s <= 127 (1 + 2^-11), so clamping costs < s/2 too).
TEST(Int8PerChannel, SymmetricNearest) {
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {17, 257}}) {
    const Tensor w = random_weight(n, k, uint64_t(n + 3 * k), 0.5f);
    const Int8ChannelWeight q = quantize_int8_per_channel(w);
    expect_same_bits(dequantize(q), q.dequant);
    for (int64_t i = 0; i < n; ++i) {
      const float s = fp16_to_float(q.scale.data<uint16_t>()[i]);
      ASSERT_GT(s, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_LE(std::abs(int(q.qweight.data<int8_t>()[i * k + j])), 127);
        ASSERT_LE(std::fabs(w.data<float>()[i * k + j] - q.dequant.data<float>()[i * k + j]), 0.5f * s * (1 + 1e-6f));
      }
    }
  }
}

// Real weights (qs-llama-tiny, bf16): every linear of layer 0 quantized both ways. The packed forms dequantize to
// the references bit for bit; the relative error is that of 4-bit quantization of near-Gaussian rows
// (~0.1: a step of 6-8 sigma / 15, error step / sqrt(12)), well below the 0.2 bound and far above 0.
TEST(RealWeights, QsLlamaTinyLayer0) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  const io::TensorStore store = io::TensorStore::open(test::data_path("models/qs-llama-tiny"));
  for (const char* lin : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                          "mlp.up_proj", "mlp.down_proj"}) {
    SCOPED_TRACE(lin);
    const Tensor w = store.get(std::string("model.layers.0.") + lin + ".weight").to_f32();
    const size_t n = size_t(w.numel());
    const W4PerChannelWeight pc = quantize_w4_per_channel(w);
    expect_same_bits(dequantize(pc), pc.dequant);
    const double e_pc = test::normalized_error(pc.dequant.data<float>(), w.data<float>(), n);
    const W4G128Weight g = quantize_w4_g128(w);
    expect_same_bits(dequantize(g), g.dequant);
    const double e_g = test::normalized_error(g.dequant.data<float>(), w.data<float>(), n);
    const Int8ChannelWeight i8 = quantize_int8_per_channel(w);
    const double e_8 = test::normalized_error(i8.dequant.data<float>(), w.data<float>(), n);
    std::printf("%-17s W4 per-channel %.4f  W4 g128 %.4f  W8 %.5f\n", lin, e_pc, e_g, e_8);
    EXPECT_GT(e_pc, 0.01);
    EXPECT_LT(e_pc, 0.2);
    EXPECT_LT(e_g, e_pc);  // groups of 128 adapt better than one scale per row
    EXPECT_LT(e_8, e_g / 4);  // 4 more bits: ~16x smaller steps
  }
}

}  // namespace
}  // namespace qs::quant
