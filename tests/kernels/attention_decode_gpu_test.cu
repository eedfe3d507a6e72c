// GPU tests of the fused RoPE + KV write (bit-exact against the reference, KV4, FP16 and FP8) and of decode attention
// over the paged cache (against the double-precision reference; paged with page 16 == page 64; batched ==
// request by request; split == unsplit up to fp32 merge rounding). Awkward contexts 1, 63, 64, 65, 1000 mixed in
// one batch; GQA 1, 2, 4, 7, 8, 16; head_dim 64 and 128.
//
// Tolerance (normalized error vs the fp64 reference on the same dequantized cache): the kernel rounds each
// dequantized K/V element to fp16 (2^-11 relative) after an hfma2 whose addend -zero*scale is itself fp16
// (2^-11 of |zero*scale|, a per-token offset up to ~|min| of the group), rounds P to fp16 and the output to fp16:
// a few 1e-3 in total; bound 1e-2. The FP16 cache has only the P and output roundings: bound 4e-3. The FP8 cache
// converts e4m3 to fp16 exactly and applies the scales in fp32, so it has the same roundings (P x 256 x V scale
// instead of P): bound 4e-3.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "backends/ref_cpu/attention_kv4.h"
#include "kernels/attention/decode_attention.h"
#include "kernels/attention_gpu_util.cuh"
#include "kernels/attention_test_util.h"
#include "kernels/kv_cache/kv_cache_write.h"

namespace qs {
namespace {

using kernels::KvCacheLayout;
using qs::KvDType;
using test::PagedBatch;

const std::vector<int32_t> kMixed = {1, 63, 64, 65, 1000, 17, 300};

// Runs the GPU write on pb's inputs into fresh pools and returns them (and checks q/k/v outputs bit-exact).
struct GpuCache {
  std::unique_ptr<DeviceBuffer<uint8_t>> k, v;
};
GpuCache gpu_write(PagedBatch& pb) {
  DeviceBuffer<uint16_t> qkv(pb.qkv), q(pb.q_roped.size()), k(pb.k_roped.size()), v(pb.v_copy.size());
  DeviceBuffer<int32_t> pos(pb.positions), slots(pb.slots);
  DeviceBuffer<float> inv(pb.inv_freq);
  GpuCache c{std::make_unique<DeviceBuffer<uint8_t>>(pb.k_pool.size()), std::make_unique<DeviceBuffer<uint8_t>>(pb.v_pool.size())};
  c.k->fill_bytes(0xA5);
  c.v->fill_bytes(0xA5);
  test::poison(q), test::poison(k), test::poison(v);
  kernels::KvWriteParams w = pb.write_params();
  w.qkv = qkv.get(); w.positions = pos.get(); w.slot_mapping = slots.get(); w.inv_freq = inv.get();
  w.q_out = q.get(); w.k_out = k.get(); w.v_out = v.get();
  w.k_pool = c.k->get(); w.v_pool = c.v->get();
  EXPECT_TRUE(kernels::kv_cache_write(w, 0).is_ok());
  EXPECT_EQ(q.download(), pb.q_roped);
  EXPECT_EQ(k.download(), pb.k_roped);
  EXPECT_EQ(v.download(), pb.v_copy);
  return c;
}

class KvWriteGpu : public ::testing::TestWithParam<std::tuple<int, int, KvDType>> {};

TEST_P(KvWriteGpu, BitExactWithReference) {
  QS_REQUIRE_GPU();
  const auto [page, d, dt] = GetParam();
  PagedBatch pb = test::make_paged_batch({page, 2, d, dt}, 14, kMixed, 21);
  GpuCache c = gpu_write(pb);
  const auto k = c.k->download(), v = c.v->download();
  size_t kdiff = 0, vdiff = 0;
  for (size_t i = 0; i < k.size(); ++i) kdiff += k[i] != pb.k_pool[i], vdiff += v[i] != pb.v_pool[i];
  EXPECT_EQ(kdiff, 0u) << "K pool bytes differing from the reference";
  EXPECT_EQ(vdiff, 0u) << "V pool bytes differing from the reference";
}

INSTANTIATE_TEST_SUITE_P(Shapes, KvWriteGpu,
                         ::testing::Values(std::tuple{16, 128, KvDType::kKv4}, std::tuple{64, 128, KvDType::kKv4},
                                           std::tuple{64, 64, KvDType::kKv4}, std::tuple{16, 64, KvDType::kFp16},
                                           std::tuple{64, 128, KvDType::kFp16}, std::tuple{16, 128, KvDType::kFp8},
                                           std::tuple{64, 64, KvDType::kFp8}));

TEST(KvWriteGpu, BadShapeIsAnError) {
  QS_REQUIRE_GPU();
  kernels::KvWriteParams w;
  w.layout = {64, 2, 96, KvDType::kKv4};
  w.num_q_heads = 4;
  w.qkv_stride = 1 << 20;
  const Status s = kernels::kv_cache_write(w, 0);
  EXPECT_FALSE(s.is_ok());
  EXPECT_THAT(s.message(), ::testing::HasSubstr("head_dim must be 64 or 128"));
}

struct DecodeRun {
  std::vector<uint16_t> out;
  int nonfinite = 0;
};

// Decode on the GPU from a cache in device memory. `sms` steers the plan (few SMs -> no split).
DecodeRun gpu_decode(PagedBatch& pb, const DeviceBuffer<uint8_t>& kp, const DeviceBuffer<uint8_t>& vp,
                     const std::vector<uint16_t>& q, const std::vector<int32_t>& ctx, const std::vector<int32_t>& bt,
                     const kernels::DecodePlan& plan) {
  DeviceBuffer<uint16_t> dq(q), out(q.size());
  DeviceBuffer<int32_t> dctx(ctx), dbt(bt);
  DeviceBuffer<uint8_t> ws(plan.workspace_bytes);
  test::poison(out);
  kernels::DecodeParams p;
  p.q = dq.get(); p.out = out.get();
  p.k_pool = kp.get(); p.v_pool = vp.get();
  p.layout = pb.layout;
  p.block_table = dbt.get(); p.block_table_stride = pb.bt_stride;
  p.context_lens = dctx.get();
  p.batch = int32_t(ctx.size());
  p.num_q_heads = pb.num_q_heads;
  p.softmax_scale = 1.0f / std::sqrt(float(pb.layout.head_dim));
  EXPECT_TRUE(kernels::run_decode(p, plan, ws.get(), 0).is_ok());
  return {out.download(), test::nonfinite(out)};
}

class DecodeGpu : public ::testing::TestWithParam<std::tuple<int, KvDType, int, int>> {};

TEST_P(DecodeGpu, MatchesReferencePagedBatchedAndSplit) {
  QS_REQUIRE_GPU();
  const auto [d, dt, hq, hkv] = GetParam();
  PagedBatch a = test::make_paged_batch({16, hkv, d, dt}, hq, kMixed, 33 + hq);
  PagedBatch b = test::make_paged_batch({64, hkv, d, dt}, hq, kMixed, 33 + hq);
  GpuCache ca = gpu_write(a), cb = gpu_write(b);
  const auto q = test::last_token_queries(a);
  const int maxc = *std::max_element(kMixed.begin(), kMixed.end());
  const int bsz = int(kMixed.size());
  const auto split = kernels::plan_decode(bsz, hq, a.layout, maxc, 132);
  const kernels::DecodePlan whole{(maxc + 15) / 16 * 16, 1, 0};  // one chunk per sequence: no merge
  ASSERT_GT(split.max_chunks, 1);
  ASSERT_EQ(whole.max_chunks, 1);
  const DecodeRun ra = gpu_decode(a, *ca.k, *ca.v, q, kMixed, a.block_table, split);
  const DecodeRun rb = gpu_decode(b, *cb.k, *cb.v, q, kMixed, b.block_table, split);
  const DecodeRun rw = gpu_decode(a, *ca.k, *ca.v, q, kMixed, a.block_table, whole);
  EXPECT_EQ(ra.nonfinite, 0);
  EXPECT_EQ(rw.nonfinite, 0);
  EXPECT_EQ(ra.out, rb.out) << "page size 16 and 64 must give identical results";

  std::vector<float> ref(q.size());
  kernels::DecodeParams rp;
  rp.q = q.data(); rp.k_pool = a.k_pool.data(); rp.v_pool = a.v_pool.data(); rp.layout = a.layout;
  rp.block_table = a.block_table.data(); rp.block_table_stride = a.bt_stride; rp.context_lens = kMixed.data();
  rp.batch = bsz; rp.num_q_heads = hq; rp.softmax_scale = 1.0f / std::sqrt(float(d));
  ref_cpu::decode_attention(rp, ref.data());
  const double tol = dt == KvDType::kKv4 ? 1e-2 : 4e-3;
  const double e_split = test::normalized_error(test::from_fp16(ra.out), ref);
  const double e_whole = test::normalized_error(test::from_fp16(rw.out), ref);
  EXPECT_LT(e_split, tol);
  EXPECT_LT(e_whole, tol);
  std::printf("d=%d %s hq=%d hkv=%d: err split %.2e whole %.2e (tol %.0e)\n", d,
              kv_dtype_name(dt), hq, hkv, e_split, e_whole, tol);
  // Per sequence too (a short context must not hide behind a long one).
  const int64_t row = int64_t(hq) * d;
  const std::vector<float> out_f = test::from_fp16(ra.out);
  for (int s = 0; s < bsz; ++s) {
    const std::vector<float> o(out_f.begin() + s * row, out_f.begin() + (s + 1) * row);
    const std::vector<float> r(ref.begin() + s * row, ref.begin() + (s + 1) * row);
    EXPECT_LT(test::normalized_error(o, r), tol) << "sequence " << s << " context " << kMixed[s];
  }
  // Batched == request by request (same plan, own block-table row).
  for (int s : {0, 4}) {
    std::vector<uint16_t> qs(q.begin() + s * row, q.begin() + (s + 1) * row);
    std::vector<int32_t> bt(a.block_table.begin() + s * a.bt_stride, a.block_table.begin() + (s + 1) * a.bt_stride);
    const DecodeRun one = gpu_decode(a, *ca.k, *ca.v, qs, {kMixed[s]}, bt, split);
    EXPECT_TRUE(std::equal(one.out.begin(), one.out.end(), ra.out.begin() + s * row)) << "sequence " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecodeGpu,
    ::testing::Values(std::tuple{128, KvDType::kKv4, 4, 4}, std::tuple{128, KvDType::kKv4, 8, 4},
                      std::tuple{128, KvDType::kKv4, 8, 2}, std::tuple{128, KvDType::kKv4, 14, 2},
                      std::tuple{128, KvDType::kKv4, 16, 2}, std::tuple{128, KvDType::kKv4, 32, 2},
                      std::tuple{64, KvDType::kKv4, 7, 1}, std::tuple{64, KvDType::kKv4, 4, 2},
                      std::tuple{128, KvDType::kFp16, 16, 2}, std::tuple{64, KvDType::kFp16, 14, 2},
                      std::tuple{128, KvDType::kFp8, 8, 2}, std::tuple{128, KvDType::kFp8, 14, 2},
                      std::tuple{128, KvDType::kFp8, 4, 4}, std::tuple{64, KvDType::kFp8, 7, 1}));

TEST(DecodeGpuPlan, SplitsOnlyWhenTheBatchCannotFillTheGpu) {
  const kernels::KvCacheLayout l{64, 8, 128, KvDType::kKv4};
  const auto small = kernels::plan_decode(1, 32, l, 4096, 132);
  EXPECT_GT(small.max_chunks, 1);
  EXPECT_EQ(small.chunk_tokens % 16, 0);
  EXPECT_GE(int64_t(small.chunk_tokens) * small.max_chunks, 4096);
  EXPECT_EQ(small.workspace_bytes, size_t(32) * small.max_chunks * 129 * 4);
  const auto big = kernels::plan_decode(1024, 32, l, 1024, 132);
  EXPECT_EQ(big.max_chunks, 1);
  EXPECT_EQ(big.workspace_bytes, 0u);
}

TEST(DecodeGpuPlan, UnsupportedGroupIsAnError) {
  try {
    kernels::plan_decode(1, 34, {64, 2, 128, KvDType::kKv4}, 100, 132);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("GQA group 17 > 16 not supported"));
  }
}

}  // namespace
}  // namespace qs
