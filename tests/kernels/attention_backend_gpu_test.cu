// GPU test of the CUDA binding (backends/cuda/attention): a two-layer PagedKvCache written through kv_cache_write
// into layer 1 and read back by DecodeAttention (plan + run) must match the reference decode on the same pages;
// running with a stale plan is reported. Tolerance as in attention_decode_gpu_test.cu (KV4: test::kDecodeKv4Tol,
// derived in TESTING.md), with its negative control: the softmax scale off by 1% exceeds it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "backends/cuda/attention.h"
#include "backends/ref_cpu/attention_kv4.h"
#include "kernels/attention_gpu_util.cuh"
#include "kernels/attention_test_util.h"

namespace qs {
namespace {

using qs::KvDType;

TEST(AttentionBackend, CacheWriteThenDecodeMatchesReference) {
  QS_REQUIRE_GPU();
  const int hq = 8, hkv = 2, d = 128;
  const std::vector<int32_t> ctx = {65, 1000, 1};
  test::PagedBatch pb = test::make_paged_batch({64, hkv, d, KvDType::kKv4}, hq, ctx, 77);
  cuda::PagedKvCache cache(2, pb.num_pages, pb.layout);
  EXPECT_EQ(cache.k_pool(1) - cache.k_pool(0), pb.num_pages * pb.layout.page_bytes());
  EXPECT_EQ(cache.v_pool(0) - cache.k_pool(0), 2 * pb.num_pages * pb.layout.page_bytes());
  DeviceBuffer<uint16_t> qkv(pb.qkv), qo(pb.q_roped.size());
  DeviceBuffer<int32_t> pos(pb.positions), slots(pb.slots), bt(pb.block_table), lens(ctx);
  DeviceBuffer<float> inv(pb.inv_freq);
  kernels::KvWriteParams w = pb.write_params();
  w.qkv = qkv.get(); w.positions = pos.get(); w.slot_mapping = slots.get(); w.inv_freq = inv.get();
  w.q_out = qo.get(); w.k_out = nullptr; w.v_out = nullptr;
  w.k_pool = cache.k_pool(1); w.v_pool = cache.v_pool(1);
  ASSERT_TRUE(kernels::kv_cache_write(w, 0).is_ok());

  const auto q = test::last_token_queries(pb);
  DeviceBuffer<uint16_t> dq(q), out(q.size());
  test::poison(out);
  cuda::DecodeAttention attn;
  attn.plan(int32_t(ctx.size()), hq, pb.layout, 1000);
  kernels::DecodeParams p;
  p.q = dq.get(); p.out = out.get(); p.k_pool = cache.k_pool(1); p.v_pool = cache.v_pool(1);
  p.layout = pb.layout; p.block_table = bt.get(); p.block_table_stride = pb.bt_stride; p.context_lens = lens.get();
  p.batch = int32_t(ctx.size()); p.num_q_heads = hq; p.softmax_scale = 1.0f / std::sqrt(float(d));
  ASSERT_TRUE(attn.run(p, 0).is_ok());
  EXPECT_EQ(test::nonfinite(out), 0);

  std::vector<float> ref(q.size());
  kernels::DecodeParams rp = p;
  rp.q = q.data(); rp.k_pool = pb.k_pool.data(); rp.v_pool = pb.v_pool.data();
  rp.block_table = pb.block_table.data(); rp.context_lens = ctx.data();
  ref_cpu::decode_attention(rp, ref.data());
  const double err = test::normalized_error(test::from_fp16(out.download()), ref);
  EXPECT_LT(err, test::kDecodeKv4Tol);
  kernels::DecodeParams bad = p;
  bad.softmax_scale *= 1.01f;
  test::poison(out);
  ASSERT_TRUE(attn.run(bad, 0).is_ok());
  const double err_bad = test::normalized_error(test::from_fp16(out.download()), ref);
  EXPECT_GT(err_bad, test::kDecodeKv4Tol) << "a 1% softmax-scale error passes the bound";
  std::printf("backend decode: err %.2e (tol %.1e), scale +1%% %.2e\n", err, test::kDecodeKv4Tol, err_bad);

  p.batch = 2;  // stale plan
  EXPECT_THAT(attn.run(p, 0).message(), ::testing::HasSubstr("differ from the last plan"));
}

}  // namespace
}  // namespace qs
