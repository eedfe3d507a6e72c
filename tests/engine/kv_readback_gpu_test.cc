// The KV4 read-back of the fake-quantized protocol on the GPU (kernels/kv_cache/kv_cache_readback.h): after the
// fused RoPE + KV4 write stores random keys and values in a paged pool (awkward shapes: 67 tokens scattered over
// pages of 16 in reverse order, GQA with 3 KV heads, head_dim 128 and 64, some tokens not cached), the read-back
// must give, for every cached token, exactly fp16(formats.h dequantize_kv4) of the codes, scale and zero the pool
// holds (checked bit for bit against a host dequantization of the downloaded pool), and leave uncached rows as
// they were. The end-to-end protocol (GPU vs the CPU reference with quantized_self_kv) is in eval_modes_gpu_test.
#include <gtest/gtest.h>

#include "common/test_util.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "formats/formats.h"
#include "kernels/common/device_buffer.h"
#include "kernels/kv_cache/kv_cache_readback.h"
#include "kernels/kv_cache/kv_cache_write.h"

namespace qs {
namespace {

void check(int head_dim) {
  SCOPED_TRACE("head_dim " + std::to_string(head_dim));
  const int T = 67, NQ = 6, NKV = 3, page = 16, pages = 6;
  kernels::KvCacheLayout layout;
  layout.page_size = page;
  layout.num_kv_heads = NKV;
  layout.head_dim = head_dim;
  layout.dtype = KvDType::kKv4;
  const int stride = (NQ + 2 * NKV) * head_dim;
  const std::vector<float> x = test::random_normal(size_t(T) * stride, 7, 2.0f);
  std::vector<uint16_t> qkv(x.size());
  for (size_t i = 0; i < x.size(); ++i) qkv[i] = float_to_fp16(x[i]);
  std::vector<int32_t> pos(T), slot(T);
  for (int t = 0; t < T; ++t) {
    pos[size_t(t)] = 100 + t;
    slot[size_t(t)] = (t % 11 == 5) ? -1 : (pages - 1 - t / page) * page + t % page;  // pages in reverse order
  }
  std::vector<float> inv(size_t(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i) inv[size_t(i)] = std::pow(10000.0f, -2.0f * float(i) / float(head_dim));
  DeviceBuffer<uint16_t> d_qkv(qkv), q_out(size_t(T) * NQ * head_dim), k_out(size_t(T) * NKV * head_dim),
      v_out(size_t(T) * NKV * head_dim);
  DeviceBuffer<int32_t> d_pos(pos), d_slot(slot);
  DeviceBuffer<float> d_inv(inv);
  DeviceBuffer<uint8_t> kp(size_t(pages * layout.page_bytes())), vp(size_t(pages * layout.page_bytes()));
  kp.fill_bytes(0);
  vp.fill_bytes(0);
  kernels::KvWriteParams w;
  w.qkv = d_qkv.get();
  w.qkv_stride = stride;
  w.num_tokens = T;
  w.num_q_heads = NQ;
  w.layout = layout;
  w.positions = d_pos.get();
  w.slot_mapping = d_slot.get();
  w.inv_freq = d_inv.get();
  w.q_out = q_out.get();
  w.k_out = k_out.get();
  w.v_out = v_out.get();
  w.k_pool = kp.get();
  w.v_pool = vp.get();
  ASSERT_TRUE(kernels::kv_cache_write(w, nullptr).is_ok());
  const auto k_before = k_out.download(), v_before = v_out.download();

  kernels::KvReadbackParams r;
  r.layout = layout;
  r.num_tokens = T;
  r.slot_mapping = d_slot.get();
  r.k_pool = kp.get();
  r.v_pool = vp.get();
  r.k_out = k_out.get();
  r.v_out = v_out.get();
  ASSERT_TRUE(kernels::kv_cache_readback(r, nullptr).is_ok());
  const auto k_after = k_out.download(), v_after = v_out.download();
  const auto kh = kp.download(), vh = vp.download();
  int64_t changed = 0;
  for (int kvsel = 0; kvsel < 2; ++kvsel) {
    const auto& pool = kvsel == 0 ? kh : vh;
    const auto& before = kvsel == 0 ? k_before : v_before;
    const auto& after = kvsel == 0 ? k_after : v_after;
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < NKV; ++h) {
        const size_t o = (size_t(t) * NKV + size_t(h)) * size_t(head_dim);
        if (slot[size_t(t)] < 0) {
          for (int i = 0; i < head_dim; ++i) EXPECT_EQ(after[o + size_t(i)], before[o + size_t(i)]) << t;
          continue;
        }
        const uint8_t* blk = pool.data() + layout.block_offset(slot[size_t(t)] / page, h);
        const int tok = slot[size_t(t)] % page;
        uint16_t sc, ze;
        std::memcpy(&sc, blk + layout.scale_offset(tok), 2);
        std::memcpy(&ze, blk + layout.zero_offset(tok), 2);
        for (int i = 0; i < head_dim; ++i) {
          const float want =
              fmt4::dequantize_kv4(fmt4::get_nibble(blk + layout.data_offset(tok), i), fmt4::Kv4Params{sc, ze});
          ASSERT_EQ(after[o + size_t(i)], float_to_fp16(want)) << "token " << t << " head " << h << " elem " << i;
          // And close to the unquantized value (one KV4 step: range / 15, here a few units).
          EXPECT_LE(std::abs(fp16_to_float(after[o + size_t(i)]) - fp16_to_float(before[o + size_t(i)])),
                    fp16_to_float(sc) * 0.5f + 1e-2f);
          changed += after[o + size_t(i)] != before[o + size_t(i)];
        }
      }
  }
  EXPECT_GT(changed, 0);  // the read-back is not the identity
}

TEST(KvReadback, EqualsHostDequantizationOfThePool) {
  QS_REQUIRE_GPU();
  check(128);
  check(64);
}

TEST(KvReadback, Fp16PoolIsANoOpAndFp8AnError) {
  QS_REQUIRE_GPU();
  kernels::KvReadbackParams r;
  r.num_tokens = 3;
  r.layout.dtype = KvDType::kFp16;
  EXPECT_TRUE(kernels::kv_cache_readback(r, nullptr).is_ok());  // nothing launched, no pointer needed
  r.layout.dtype = KvDType::kFp8;
  EXPECT_FALSE(kernels::kv_cache_readback(r, nullptr).is_ok());
  r.layout.dtype = KvDType::kKv4;
  EXPECT_FALSE(kernels::kv_cache_readback(r, nullptr).is_ok());  // missing pointers
}

}  // namespace
}  // namespace qs

#else
TEST(KvReadback, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif
