// GPU tests of the fused RoPE + KV write (bit-exact against the reference, KV4, FP16 and FP8) and of decode attention
// over the paged cache (against the double-precision reference; paged with page 16 == page 64 == page 48, the
// last one not a power of two; batched == request by request; split == unsplit up to fp32 merge rounding).
// Awkward contexts 1, 63, 64, 65, 1000 mixed in one batch; GQA groups 1 to 16; head_dim 64 and 128; every kernel
// instantiation of run_decode (the shape list in attention_test_util.h, checked against the dispatch code by
// attention_ref_test.cc KernelDispatchCoverage).
//
// Tolerance (normalized error vs the fp64 reference on the same cache, batch and every sequence): derived in
// TESTING.md ("Attention tolerances"): FP16 / FP8 cache 1e-3 (2u: output and P roundings), KV4 2.5e-3 (4.8u: the
// P rounding is seen through the raw V codes because the zero is applied in fp32). Negative controls show the
// bounds bite: the same kernel with the softmax scale off by 1% exceeds them (batch, and every sequence of 63 or
// more tokens), and so does one V value of the 1-token sequence moved by one quantization step.
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

const std::vector<int32_t>& kMixed = test::decode_contexts();

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
                                           std::tuple{64, 64, KvDType::kFp8}, std::tuple{48, 64, KvDType::kKv4},
                                           std::tuple{48, 128, KvDType::kFp16}, std::tuple{48, 128, KvDType::kFp8}));

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
                     const kernels::DecodePlan& plan, float scale_mult = 1.0f) {
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
  p.softmax_scale = 1.0f / std::sqrt(float(pb.layout.head_dim)) * scale_mult;
  EXPECT_TRUE(kernels::run_decode(p, plan, ws.get(), 0).is_ok());
  return {out.download(), test::nonfinite(out)};
}

class DecodeGpu : public ::testing::TestWithParam<test::DecodeShape> {};

TEST_P(DecodeGpu, MatchesReferencePagedBatchedAndSplit) {
  QS_REQUIRE_GPU();
  const test::DecodeShape shape = GetParam();
  const auto [d, dt, hq, hkv] = shape;
  const std::vector<int32_t>& ctx = test::decode_contexts();
  PagedBatch a = test::make_paged_batch({16, hkv, d, dt}, hq, ctx, test::decode_seed(shape));
  PagedBatch b = test::make_paged_batch({64, hkv, d, dt}, hq, ctx, test::decode_seed(shape));
  PagedBatch c = test::make_paged_batch({48, hkv, d, dt}, hq, ctx, test::decode_seed(shape));  // page / 48: division
  GpuCache ca = gpu_write(a), cb = gpu_write(b), cc = gpu_write(c);
  const auto q = test::last_token_queries(a);
  const int maxc = *std::max_element(ctx.begin(), ctx.end());
  const int bsz = int(ctx.size());
  const auto split = kernels::plan_decode(bsz, hq, a.layout, maxc, 132);
  const kernels::DecodePlan whole{(maxc + 15) / 16 * 16, 1, 0};  // one chunk per sequence: no merge
  ASSERT_GT(split.max_chunks, 1);
  ASSERT_EQ(whole.max_chunks, 1);
  const DecodeRun ra = gpu_decode(a, *ca.k, *ca.v, q, ctx, a.block_table, split);
  const DecodeRun rb = gpu_decode(b, *cb.k, *cb.v, q, ctx, b.block_table, split);
  const DecodeRun rc = gpu_decode(c, *cc.k, *cc.v, q, ctx, c.block_table, split);
  const DecodeRun rw = gpu_decode(a, *ca.k, *ca.v, q, ctx, a.block_table, whole);
  EXPECT_EQ(ra.nonfinite, 0);
  EXPECT_EQ(rw.nonfinite, 0);
  EXPECT_EQ(ra.out, rb.out) << "page size 16 and 64 must give identical results";
  EXPECT_EQ(ra.out, rc.out) << "page size 16 and 48 must give identical results";

  std::vector<float> ref(q.size());
  ref_cpu::decode_attention(test::decode_params(a, q), ref.data());
  const double tol = test::decode_tol(dt);
  const double e_split = test::normalized_error(test::from_fp16(ra.out), ref);
  const double e_whole = test::normalized_error(test::from_fp16(rw.out), ref);
  EXPECT_LT(e_split, tol);
  EXPECT_LT(e_whole, tol);
  // Per sequence too (a short context must not hide behind a long one).
  const int64_t row = int64_t(hq) * d;
  const std::vector<double> per_seq =
      test::sequence_errors(test::from_fp16(ra.out), ref, test::decode_rows(ctx.size()), row);
  double worst = 0;
  for (int s = 0; s < bsz; ++s) {
    EXPECT_LT(per_seq[s], tol) << "sequence " << s << " context " << ctx[s];
    worst = std::max(worst, per_seq[s]);
  }
  std::printf("d=%d %s hq=%d hkv=%d: err split %.2e whole %.2e worst sequence %.2e (tol %.1e)\n", d,
              kv_dtype_name(dt), hq, hkv, e_split, e_whole, worst, tol);

  // Negative control 1: the softmax scale off by 1% must exceed the bound (batch; sequences of >= 63 tokens).
  const DecodeRun bad_scale = gpu_decode(a, *ca.k, *ca.v, q, ctx, a.block_table, split, 1.01f);
  const double e_bad = test::normalized_error(test::from_fp16(bad_scale.out), ref);
  EXPECT_GT(e_bad, tol) << "a 1% softmax-scale error passes the bound";
  const auto bad_seq = test::sequence_errors(test::from_fp16(bad_scale.out), ref, test::decode_rows(ctx.size()), row);
  for (int s = 0; s < bsz; ++s)
    if (ctx[s] >= 63) EXPECT_GT(bad_seq[s], tol) << "1% scale error, sequence " << s << " context " << ctx[s];
  // Negative control 2: one V value of the 1-token sequence (sequence 0) moved by one quantization step.
  ASSERT_EQ(ctx[0], 1);
  const std::vector<uint8_t> vbad = test::perturb_v_one_step(a.v_pool, a.layout, a.block_table.data(), 0, 0);
  DeviceBuffer<uint8_t> dvbad(vbad);
  const DecodeRun bad_v = gpu_decode(a, *ca.k, dvbad, q, ctx, a.block_table, split);
  const double e_v = test::sequence_errors(test::from_fp16(bad_v.out), ref, test::decode_rows(ctx.size()), row)[0];
  EXPECT_GT(e_v, tol) << "one V value one step off passes the bound";
  std::printf("  negative controls: scale +1%% %.2e, one V step %.2e\n", e_bad, e_v);

  // KV4 head_dim 128: chunks shared by 2 or 4 warps of a CTA (shared-memory merge), with and without a global
  // split; ranges past a short context are empty (1 token: only the first warp has work).
  if (dt == KvDType::kKv4 && d == 128) {
    for (int warps : {2, 4})
      for (int64_t chunks : {int64_t(split.max_chunks), int64_t(1)}) {
        const auto plan = kernels::plan_decode_chunks(bsz, hq, a.layout, maxc, chunks, warps);
        ASSERT_EQ(plan.warps_per_chunk, warps);
        const DecodeRun r = gpu_decode(a, *ca.k, *ca.v, q, ctx, a.block_table, plan);
        EXPECT_EQ(r.nonfinite, 0) << warps << " warps, " << plan.max_chunks << " chunks";
        const double e = test::normalized_error(test::from_fp16(r.out), ref);
        EXPECT_LT(e, tol) << warps << " warps, " << plan.max_chunks << " chunks";
        const auto seq = test::sequence_errors(test::from_fp16(r.out), ref, test::decode_rows(ctx.size()), row);
        for (int s = 0; s < bsz; ++s)
          EXPECT_LT(seq[s], tol) << warps << " warps, " << plan.max_chunks << " chunks, sequence " << s;
        std::printf("  %d warps per chunk, %d chunks: err %.2e\n", warps, plan.max_chunks, e);
      }
  }

  // Batched == request by request (same plan, own block-table row).
  for (int s : {0, 4}) {
    std::vector<uint16_t> qs(q.begin() + s * row, q.begin() + (s + 1) * row);
    std::vector<int32_t> bt(a.block_table.begin() + s * a.bt_stride, a.block_table.begin() + (s + 1) * a.bt_stride);
    const DecodeRun one = gpu_decode(a, *ca.k, *ca.v, qs, {ctx[s]}, bt, split);
    EXPECT_TRUE(std::equal(one.out.begin(), one.out.end(), ra.out.begin() + s * row)) << "sequence " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeGpu, ::testing::ValuesIn(test::decode_shapes()));

// Host-only: every test shape gets a split plan on 132 SMs, so each runs both the split and the unsplit path.
TEST(DecodeGpuPlan, EveryTestShapeSplits) {
  const std::vector<int32_t>& ctx = test::decode_contexts();
  const int maxc = *std::max_element(ctx.begin(), ctx.end());
  for (const test::DecodeShape& s : test::decode_shapes())
    EXPECT_GT(kernels::plan_decode(int32_t(ctx.size()), s.hq, {16, s.hkv, s.d, s.dt}, maxc, 132).max_chunks, 1)
        << "d " << s.d << " " << kv_dtype_name(s.dt) << " hq " << s.hq << " hkv " << s.hkv;
}

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
  // About 8 warps per SM (bench/results/attention.md, plan sweep on the H200): batch 128 x 8 KV heads (1024 warps)
  // is not split; batch 32 (256 pairs) gets 4 warps per chunk and no global split, batch 64 (group 8) 2 warps;
  // batch 256 (2048 warps: 1.3 waves of 12 warps per SM) 2 warps per chunk for the tail; batch 1 splits both ways.
  const auto at = [&](int b, int hq, int ctx) {
    const auto p = kernels::plan_decode(b, hq, l, ctx, 132);
    return std::pair{p.max_chunks, p.warps_per_chunk};
  };
  EXPECT_EQ(at(128, 32, 1024), (std::pair{1, 1}));
  EXPECT_EQ(at(32, 32, 1024), (std::pair{1, 4}));
  EXPECT_EQ(at(64, 64, 2048), (std::pair{1, 2}));
  EXPECT_EQ(at(256, 32, 1024), (std::pair{1, 2}));
  EXPECT_EQ(at(512, 32, 1024), (std::pair{1, 1}));
  EXPECT_EQ(small.warps_per_chunk, 4);
  EXPECT_EQ(big.warps_per_chunk, 1);
}

TEST(DecodeGpuPlan, WarpsPerChunkOnlyForKv4HeadDim128) {
  EXPECT_EQ(kernels::plan_decode_chunks(8, 32, {64, 8, 128, KvDType::kKv4}, 1024, 2, 4).warps_per_chunk, 4);
  EXPECT_THROW(kernels::plan_decode_chunks(8, 32, {64, 8, 128, KvDType::kFp16}, 1024, 2, 2), Error);
  EXPECT_THROW(kernels::plan_decode_chunks(8, 32, {64, 8, 64, KvDType::kKv4}, 1024, 2, 2), Error);
  EXPECT_THROW(kernels::plan_decode_chunks(8, 32, {64, 8, 128, KvDType::kKv4}, 1024, 2, 3), Error);
  // A hand-made plan is checked at launch (before any device work).
  kernels::DecodeParams p;
  p.layout = {64, 8, 128, KvDType::kFp16};
  p.batch = 1;
  p.num_q_heads = 32;
  kernels::DecodePlan plan{1024, 1, 0, 2};
  const Status s = kernels::run_decode(p, plan, nullptr, 0);
  EXPECT_FALSE(s.is_ok());
  EXPECT_THAT(s.message(), ::testing::HasSubstr("warps_per_chunk 2"));
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
