// Tests of the CPU references for the KV cache write and attention (backends/ref_cpu/attention_kv4) against
// straightforward double-precision formulas, plus composition: paged == contiguous, page size 16 == 64, prefill
// of a chunk == decode token by token.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backends/ref_cpu/attention_kv4.h"
#include "core/error.h"
#include "kernels/attention_test_util.h"
#include "formats/formats.h"

namespace qs {
namespace {

using kernels::KvCacheLayout;
using qs::KvDType;
using test::PagedBatch;

// RoPE in double, straight from the definition.
std::vector<double> rope_double(const float* x, int d, int pos, const std::vector<float>& inv_freq) {
  std::vector<double> o(d);
  for (int i = 0; i < d / 2; ++i) {
    const double a = double(float(pos) * inv_freq[i]);
    o[i] = x[i] * std::cos(a) - x[i + d / 2] * std::sin(a);
    o[i + d / 2] = x[i + d / 2] * std::cos(a) + x[i] * std::sin(a);
  }
  return o;
}

class WriteTest : public ::testing::TestWithParam<std::tuple<int, int, KvDType>> {};

TEST_P(WriteTest, RopeAndQuantizationMatchTheFormula) {
  const auto [page, d, dt] = GetParam();
  KvCacheLayout l{page, 2, d, dt};
  PagedBatch pb = test::make_paged_batch(l, 6, {1, 63, 65, 17}, 11);
  const int width = (6 + 4) * d;
  int64_t t = 0;
  double worst_q = 0, worst_k = 0;
  for (size_t b = 0; b < pb.context_lens.size(); ++b) {
    for (int32_t i = 0; i < pb.context_lens[b]; ++i, ++t) {
      std::vector<float> x(width);
      for (int k = 0; k < width; ++k) x[k] = fp16_to_float(pb.qkv[t * width + k]);
      for (int h = 0; h < 6; ++h) {  // q: fp16 of the exact rotation (fp32 products add <= 2 ulp fp32)
        const auto r = rope_double(&x[h * d], d, i, pb.inv_freq);
        for (int k = 0; k < d; ++k)
          worst_q = std::max(worst_q, std::fabs(fp16_to_float(pb.q_roped[(t * 6 + h) * d + k]) - r[k]) /
                                          (std::fabs(r[k]) + 1e-3));
      }
      for (int h = 0; h < 2; ++h) {
        const auto r = rope_double(&x[(6 + h) * d], d, i, pb.inv_freq);
        std::vector<float> got(d), gotv(d);
        ref_cpu::read_cache_token(pb.k_pool.data(), l, &pb.block_table[b * pb.bt_stride], i, h, got.data());
        ref_cpu::read_cache_token(pb.v_pool.data(), l, &pb.block_table[b * pb.bt_stride], i, h, gotv.data());
        double mn = r[0], mx = r[0];
        for (double v : r) mn = std::min(mn, v), mx = std::max(mx, v);
        // KV4: within half a step (plus the fp16 rounding of scale and zero); FP16: the fp16 rounding; FP8: half
        // an e4m3 step, 2^-4 relative for normals and 2^-10 of the (fp16) scale amax/448 for subnormals, plus the
        // fp32 RoPE's 1e-5.
        const double amax = std::max(-mn, mx);
        double vmax = 0;
        for (int k = 0; k < d; ++k) vmax = std::max(vmax, double(std::fabs(x[(8 + h) * d + k])));
        auto fp8_tol = [](double v, double am) { return std::fabs(v) * 0x1p-4 * 1.002 + am / 448 * 0x1p-10 * 1.002 + 1e-5; };
        for (int k = 0; k < d; ++k) {
          const double tol = dt == KvDType::kKv4 ? (mx - mn) / 15 * 0.52 + 1e-3
                             : dt == KvDType::kFp8 ? fp8_tol(r[k], amax)
                                                   : amax * 1e-3;
          worst_k = std::max(worst_k, std::fabs(got[k] - r[k]) / tol);
          ASSERT_LE(std::fabs(got[k] - r[k]), tol) << "token " << t << " head " << h << " dim " << k;
          const float v = x[(8 + h) * d + k];
          ASSERT_LE(std::fabs(gotv[k] - v), dt == KvDType::kKv4   ? 0.6
                                            : dt == KvDType::kFp8 ? fp8_tol(v, vmax)
                                                                  : 1e-3 * std::fabs(v))
              << k;
          ASSERT_EQ(pb.v_copy[(t * 2 + h) * d + k], pb.qkv[t * width + (8 + h) * d + k]);
        }
      }
    }
  }
  EXPECT_LT(worst_q, 1e-3);
  EXPECT_GT(worst_k, 0.05) << "suspiciously exact: is the cache quantized at all?";
  // Pages not handed out keep the canary.
  std::vector<bool> used(pb.num_pages, false);
  for (int32_t p : pb.block_table)
    if (p >= 0) used[p] = true;
  for (int64_t p = 0; p < pb.num_pages; ++p)
    if (!used[p]) EXPECT_EQ(pb.k_pool[p * l.page_bytes() + 5], 0xA5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, WriteTest,
                         ::testing::Values(std::tuple{16, 64, KvDType::kKv4}, std::tuple{64, 128, KvDType::kKv4},
                                           std::tuple{16, 128, KvDType::kFp16}, std::tuple{64, 64, KvDType::kFp16},
                                           std::tuple{16, 128, KvDType::kFp8}, std::tuple{64, 64, KvDType::kFp8}));

TEST(WriteTest, TokensWithoutSlotAreNotCachedButStillRoped) {
  KvCacheLayout l{16, 2, 64, KvDType::kKv4};
  PagedBatch pb = test::make_paged_batch(l, 4, {20}, 3);
  const auto q_before = pb.q_roped;
  std::fill(pb.k_pool.begin(), pb.k_pool.end(), 0xA5);
  std::fill(pb.v_pool.begin(), pb.v_pool.end(), 0xA5);
  std::fill(pb.q_roped.begin(), pb.q_roped.end(), 0);
  const int32_t skipped = pb.slots[17];
  pb.slots[17] = -1;
  ref_cpu::kv_cache_write(pb.write_params());
  EXPECT_EQ(pb.q_roped, q_before);
  const int64_t blk = l.block_offset(skipped / l.page_size, 1);
  const int off = skipped % l.page_size;
  EXPECT_EQ(pb.k_pool[blk + l.data_offset(off)], 0xA5);
  EXPECT_EQ(pb.v_pool[blk + l.scale_offset(off)], 0xA5);
  const int64_t blk16 = l.block_offset(pb.slots[16] / l.page_size, 1);
  EXPECT_NE(pb.k_pool[blk16 + l.scale_offset(pb.slots[16] % l.page_size) + 1], 0xA5);
}

TEST(WriteTest, BadLayoutIsRejected) {
  KvCacheLayout l{24, 2, 128, KvDType::kKv4};
  try {
    test::make_paged_batch(l, 4, {5}, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("page_size must be a positive multiple of 16"));
  }
}

kernels::DecodeParams decode_params(PagedBatch& pb, const std::vector<uint16_t>& q) {
  kernels::DecodeParams p;
  p.q = q.data();
  p.k_pool = pb.k_pool.data();
  p.v_pool = pb.v_pool.data();
  p.layout = pb.layout;
  p.block_table = pb.block_table.data();
  p.block_table_stride = pb.bt_stride;
  p.context_lens = pb.context_lens.data();
  p.batch = int32_t(pb.context_lens.size());
  p.num_q_heads = pb.num_q_heads;
  p.softmax_scale = 1.0f / std::sqrt(float(pb.layout.head_dim));
  return p;
}

TEST(DecodeRef, PagedEqualsContiguousFormulaAndPageSizeDoesNotMatter) {
  const std::vector<int32_t> ctx = {1, 64, 65, 200};
  const int hq = 8, hkv = 2, d = 64;
  PagedBatch a = test::make_paged_batch({16, hkv, d, KvDType::kKv4}, hq, ctx, 5);
  PagedBatch b = test::make_paged_batch({64, hkv, d, KvDType::kKv4}, hq, ctx, 5);
  const auto q = test::last_token_queries(a);
  ASSERT_EQ(q, test::last_token_queries(b));
  std::vector<float> oa(q.size()), ob(q.size());
  ref_cpu::decode_attention(decode_params(a, q), oa.data());
  ref_cpu::decode_attention(decode_params(b, q), ob.data());
  EXPECT_EQ(oa, ob);
  // Contiguous formula: K/V rebuilt with the formats.h quantizer from the fp32 roped rows.
  const int width = (hq + 2 * hkv) * d;
  int64_t t0 = 0;
  for (size_t s = 0; s < ctx.size(); ++s) {
    for (int h = 0; h < hq; ++h) {
      const int kvh = h / (hq / hkv);
      std::vector<double> sc(ctx[s]);
      double mx = -1e300;
      std::vector<std::vector<float>> vrows;
      for (int32_t j = 0; j < ctx[s]; ++j) {
        std::vector<float> x(d), r(d), deq(d);
        std::vector<uint8_t> pk(d / 2);
        for (int k = 0; k < d; ++k) x[k] = fp16_to_float(a.qkv[(t0 + j) * width + (hq + kvh) * d + k]);
        ref_cpu::rope_rotate_half(x.data(), r.data(), d, j, a.inv_freq.data());
        auto prm = fmt4::quantize_kv4_group(r.data(), d, pk.data());
        double dot = 0;
        for (int k = 0; k < d; ++k)
          dot += double(fp16_to_float(q[(s * hq + h) * d + k])) * fmt4::dequantize_kv4(fmt4::get_nibble(pk.data(), k), prm);
        sc[j] = dot / std::sqrt(double(d));
        mx = std::max(mx, sc[j]);
        for (int k = 0; k < d; ++k) x[k] = fp16_to_float(a.qkv[(t0 + j) * width + (hq + hkv + kvh) * d + k]);
        prm = fmt4::quantize_kv4_group(x.data(), d, pk.data());
        for (int k = 0; k < d; ++k) deq[k] = fmt4::dequantize_kv4(fmt4::get_nibble(pk.data(), k), prm);
        vrows.push_back(deq);
      }
      double l = 0;
      std::vector<double> o(d, 0);
      for (int32_t j = 0; j < ctx[s]; ++j) {
        const double pj = std::exp(sc[j] - mx);
        l += pj;
        for (int k = 0; k < d; ++k) o[k] += pj * vrows[j][k];
      }
      for (int k = 0; k < d; ++k) EXPECT_NEAR(oa[(s * hq + h) * d + k], o[k] / l, 1e-5) << s << " " << h << " " << k;
    }
    t0 += ctx[s];
  }
}

// Prefill of a chunk after a cached prefix equals decode token by token (FP16 cache: the cached k/v are exactly
// the fp16 k/v the prefill reads for the new tokens).
TEST(PrefillRef, ChunkAfterPrefixEqualsDecodePerToken) {
  const int hq = 7, hkv = 1, d = 64;
  const std::vector<int32_t> ctx = {40, 70, 3};
  const std::vector<int32_t> prefix = {0, 33, 2};
  PagedBatch pb = test::make_paged_batch({16, hkv, d, KvDType::kFp16}, hq, ctx, 9);
  // Pack the new tokens (positions >= prefix) of each sequence.
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> cu = {0};
  int64_t t0 = 0;
  for (size_t s = 0; s < ctx.size(); ++s) {
    for (int32_t i = prefix[s]; i < ctx[s]; ++i) {
      const int64_t t = t0 + i;
      q.insert(q.end(), pb.q_roped.begin() + t * hq * d, pb.q_roped.begin() + (t + 1) * hq * d);
      k.insert(k.end(), pb.k_roped.begin() + t * hkv * d, pb.k_roped.begin() + (t + 1) * hkv * d);
      v.insert(v.end(), pb.v_copy.begin() + t * hkv * d, pb.v_copy.begin() + (t + 1) * hkv * d);
    }
    cu.push_back(cu.back() + ctx[s] - prefix[s]);
    t0 += ctx[s];
  }
  kernels::PrefillParams p;
  p.q = q.data(); p.k = k.data(); p.v = v.data();
  p.cu_seqlens = cu.data();
  p.batch = int32_t(ctx.size());
  p.num_q_heads = hq; p.num_kv_heads = hkv; p.head_dim = d;
  p.softmax_scale = 0.125f;
  p.prefix_lens = prefix.data();
  p.k_pool = pb.k_pool.data(); p.v_pool = pb.v_pool.data();
  p.layout = pb.layout;
  p.block_table = pb.block_table.data();
  p.block_table_stride = pb.bt_stride;
  std::vector<float> out(q.size());
  ref_cpu::prefill_attention(p, out.data());
  for (size_t s = 0; s < ctx.size(); ++s)
    for (int32_t i = prefix[s]; i < ctx[s]; ++i) {
      const int64_t row = cu[s] + i - prefix[s];
      std::vector<uint16_t> qd(q.begin() + row * hq * d, q.begin() + (row + 1) * hq * d);
      std::vector<int32_t> len = {i + 1};
      kernels::DecodeParams dp = decode_params(pb, qd);
      dp.block_table = &pb.block_table[s * pb.bt_stride];
      dp.context_lens = len.data();
      dp.batch = 1;
      dp.softmax_scale = 0.125f;
      std::vector<float> od(qd.size());
      ref_cpu::decode_attention(dp, od.data());
      for (int k = 0; k < hq * d; ++k) ASSERT_FLOAT_EQ(out[row * hq * d + k], od[k]) << s << " " << i << " " << k;
    }
}

}  // namespace
}  // namespace qs
