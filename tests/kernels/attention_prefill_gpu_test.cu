// GPU tests of causal prefill attention over packed variable-length sequences, with and without earlier context in
// the paged cache (KV4 and FP16), against the double-precision reference; batched == request by request.
// Lengths 1, 63, 64, 65, 200, 1000 in one batch; GQA 1, 4, 7; head_dim 64 and 128.
// Tolerance (normalized error): fp16 P and fp16 output roundings (2^-11 each) plus fp32 accumulation: ~1e-3;
// bound 4e-3. With a KV4 prefix, the reference dequantizes in fp32 while the kernel rounds the dequantized
// values to fp16 (another 2^-11): bound 5e-3.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "backends/ref_cpu/attention_kv4.h"
#include "kernels/attention/prefill_attention.h"
#include "kernels/attention_gpu_util.cuh"
#include "kernels/attention_test_util.h"

namespace qs {
namespace {

using qs::KvDType;
using test::PagedBatch;

struct Packed {
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> cu{0};
  int max_q = 0;
};

// New tokens (positions >= prefix[s]) of every sequence of pb, packed.
Packed pack(const PagedBatch& pb, const std::vector<int32_t>& prefix) {
  Packed pk;
  const int hq = pb.num_q_heads, hkv = pb.layout.num_kv_heads, d = pb.layout.head_dim;
  int64_t t0 = 0;
  for (size_t s = 0; s < pb.context_lens.size(); ++s) {
    for (int32_t i = prefix[s]; i < pb.context_lens[s]; ++i) {
      const int64_t t = t0 + i;
      pk.q.insert(pk.q.end(), pb.q_roped.begin() + t * hq * d, pb.q_roped.begin() + (t + 1) * hq * d);
      pk.k.insert(pk.k.end(), pb.k_roped.begin() + t * hkv * d, pb.k_roped.begin() + (t + 1) * hkv * d);
      pk.v.insert(pk.v.end(), pb.v_copy.begin() + t * hkv * d, pb.v_copy.begin() + (t + 1) * hkv * d);
    }
    pk.cu.push_back(pk.cu.back() + pb.context_lens[s] - prefix[s]);
    pk.max_q = std::max(pk.max_q, pb.context_lens[s] - prefix[s]);
    t0 += pb.context_lens[s];
  }
  return pk;
}

kernels::PrefillParams params(const PagedBatch& pb, const Packed& pk, const std::vector<int32_t>* prefix) {
  kernels::PrefillParams p;
  p.q = pk.q.data(); p.k = pk.k.data(); p.v = pk.v.data();
  p.cu_seqlens = pk.cu.data();
  p.batch = int32_t(pk.cu.size() - 1);
  p.max_q_len = pk.max_q;
  p.num_q_heads = pb.num_q_heads; p.num_kv_heads = pb.layout.num_kv_heads; p.head_dim = pb.layout.head_dim;
  p.softmax_scale = 1.0f / std::sqrt(float(pb.layout.head_dim));
  if (prefix) {
    p.prefix_lens = prefix->data();
    p.k_pool = pb.k_pool.data(); p.v_pool = pb.v_pool.data();
    p.layout = pb.layout;
    p.block_table = pb.block_table.data();
    p.block_table_stride = pb.bt_stride;
  }
  return p;
}

struct GpuOut {
  std::vector<uint16_t> out;
  int nonfinite;
};

GpuOut gpu_prefill(kernels::PrefillParams p, const PagedBatch& pb, const Packed& pk) {
  DeviceBuffer<uint16_t> q(pk.q), k(pk.k), v(pk.v), out(pk.q.size());
  DeviceBuffer<int32_t> cu(pk.cu), bt(pb.block_table), pre(std::vector<int32_t>(p.prefix_lens ? p.prefix_lens : pk.cu.data(),
                                                                          (p.prefix_lens ? p.prefix_lens : pk.cu.data()) + p.batch));
  DeviceBuffer<uint8_t> kp(pb.k_pool), vp(pb.v_pool);
  test::poison(out);
  p.q = q.get(); p.k = k.get(); p.v = v.get(); p.out = out.get(); p.cu_seqlens = cu.get();
  if (p.prefix_lens) {
    p.prefix_lens = pre.get(); p.k_pool = kp.get(); p.v_pool = vp.get(); p.block_table = bt.get();
  }
  const Status st = kernels::run_prefill(p, 0);
  EXPECT_TRUE(st.is_ok()) << st.message();
  return {out.download(), test::nonfinite(out)};
}

class PrefillGpu : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};  // d, hq, hkv, mode

TEST_P(PrefillGpu, MatchesReference) {
  QS_REQUIRE_GPU();
  const auto [d, hq, hkv, mode] = GetParam();  // mode 0: no prefix, 1: KV4 prefix, 2: FP16 prefix, 3: FP8 prefix
  const std::vector<int32_t> ctx = {1, 63, 64, 65, 200, 1000};
  const std::vector<int32_t> prefix = mode == 0 ? std::vector<int32_t>(ctx.size(), 0)
                                                : std::vector<int32_t>{0, 62, 16, 1, 77, 640};
  const KvDType dt = mode == 2 ? KvDType::kFp16 : mode == 3 ? KvDType::kFp8 : KvDType::kKv4;
  PagedBatch pb = test::make_paged_batch({16, hkv, d, dt}, hq, ctx, 50 + d);
  Packed pk = pack(pb, prefix);
  kernels::PrefillParams hp = params(pb, pk, mode ? &prefix : nullptr);
  std::vector<float> ref(pk.q.size());
  ref_cpu::prefill_attention(hp, ref.data());
  const GpuOut g = gpu_prefill(hp, pb, pk);
  EXPECT_EQ(g.nonfinite, 0);
  // KV4 / FP8 prefixes are dequantized to fp16 in the kernel (one more rounding than the reference): 5e-3.
  const double tol = mode == 1 || mode == 3 ? 5e-3 : 4e-3;
  const double err = test::normalized_error(test::from_fp16(g.out), ref);
  EXPECT_LT(err, tol);
  const int64_t row = int64_t(hq) * d;
  for (size_t s = 0; s < ctx.size(); ++s) {
    const auto o = test::from_fp16(g.out);
    std::vector<float> a(o.begin() + pk.cu[s] * row, o.begin() + pk.cu[s + 1] * row);
    std::vector<float> r(ref.begin() + pk.cu[s] * row, ref.begin() + pk.cu[s + 1] * row);
    if (!a.empty()) EXPECT_LT(test::normalized_error(a, r), tol) << "sequence " << s;
  }
  // Request by request: the sequence alone gives the same bits.
  for (size_t s : {size_t(3), size_t(5)}) {
    PagedBatch one = pb;
    Packed ps;
    ps.q.assign(pk.q.begin() + pk.cu[s] * row, pk.q.begin() + pk.cu[s + 1] * row);
    const int64_t krow = int64_t(hkv) * d;
    ps.k.assign(pk.k.begin() + pk.cu[s] * krow, pk.k.begin() + pk.cu[s + 1] * krow);
    ps.v.assign(pk.v.begin() + pk.cu[s] * krow, pk.v.begin() + pk.cu[s + 1] * krow);
    ps.cu = {0, pk.cu[s + 1] - pk.cu[s]};
    ps.max_q = ps.cu[1];
    one.block_table.assign(pb.block_table.begin() + s * pb.bt_stride, pb.block_table.begin() + (s + 1) * pb.bt_stride);
    const std::vector<int32_t> pre1 = {prefix[s]};
    const GpuOut g1 = gpu_prefill(params(one, ps, mode ? &pre1 : nullptr), one, ps);
    EXPECT_TRUE(std::equal(g1.out.begin(), g1.out.end(), g.out.begin() + pk.cu[s] * row)) << "sequence " << s;
  }
  std::printf("prefill d=%d hq=%d hkv=%d mode=%d: err %.2e (tol %.0e)\n", d, hq, hkv, mode, err, tol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillGpu,
                         ::testing::Values(std::tuple{128, 8, 2, 0}, std::tuple{64, 7, 1, 0}, std::tuple{128, 4, 4, 0},
                                           std::tuple{128, 8, 2, 1}, std::tuple{64, 7, 1, 1},
                                           std::tuple{128, 8, 2, 2}, std::tuple{128, 8, 2, 3},
                                           std::tuple{64, 7, 1, 3}));

TEST(PrefillGpuErrors, BadHeadDim) {
  QS_REQUIRE_GPU();
  kernels::PrefillParams p;
  p.head_dim = 80;
  p.num_q_heads = p.num_kv_heads = 1;
  EXPECT_THAT(kernels::run_prefill(p, 0).message(), ::testing::HasSubstr("head_dim must be 64 or 128, got 80"));
}

}  // namespace
}  // namespace qs
