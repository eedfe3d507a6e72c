// GPU tests of causal prefill attention over packed variable-length sequences, with and without earlier context in
// the paged cache (KV4, FP16 and FP8; page sizes 16, 32, 48 and 64), against the double-precision reference;
// batched == request by request. Lengths 1, 63, 64, 65, 128, 129, 200, 257, 1000 in one batch (the kernel's 64-row
// consumer halves and 128-key tiles, whole and partial; more items than SMs, so persistent CTAs take several);
// GQA 1, 4, 7; head_dim 64 and 128 (the shape list in attention_test_util.h covers every head_dim x prefix dtype of
// run_prefill's dispatch).
// Tolerance (normalized error, batch and every sequence; derived in TESTING.md "Attention tolerances"): FP16 keys
// and values 1e-3 (2u: P and output roundings); a KV4 / FP8 prefix dequantized in fp32 and rounded to fp16 in the
// kernel 3e-3 (5.5u: + the V and K roundings). Negative control: the softmax scale off by 1% exceeds the bound.
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

using test::Packed;

struct GpuOut {
  std::vector<uint16_t> out;
  int nonfinite;
};

GpuOut gpu_prefill(kernels::PrefillParams p, const PagedBatch& pb, const Packed& pk, float scale_mult = 1.0f) {
  DeviceBuffer<uint16_t> q(pk.q), k(pk.k), v(pk.v), out(pk.q.size());
  DeviceBuffer<int32_t> cu(pk.cu), bt(pb.block_table), pre(std::vector<int32_t>(p.prefix_lens ? p.prefix_lens : pk.cu.data(),
                                                                          (p.prefix_lens ? p.prefix_lens : pk.cu.data()) + p.batch));
  DeviceBuffer<uint8_t> kp(pb.k_pool), vp(pb.v_pool);
  test::poison(out);
  p.softmax_scale *= scale_mult;
  p.q = q.get(); p.k = k.get(); p.v = v.get(); p.out = out.get(); p.cu_seqlens = cu.get();
  if (p.prefix_lens) {
    p.prefix_lens = pre.get(); p.k_pool = kp.get(); p.v_pool = vp.get(); p.block_table = bt.get();
  }
  const Status st = kernels::run_prefill(p, 0);
  EXPECT_TRUE(st.is_ok()) << st.message();
  return {out.download(), test::nonfinite(out)};
}

class PrefillGpu : public ::testing::TestWithParam<test::PrefillShape> {};

TEST_P(PrefillGpu, MatchesReference) {
  QS_REQUIRE_GPU();
  const test::PrefillShape shape = GetParam();
  const auto [d, hq, hkv, mode, page] = shape;  // mode 0: no prefix, 1: KV4 prefix, 2: FP16 prefix, 3: FP8 prefix
  const std::vector<int32_t>& ctx = test::prefill_contexts();
  const std::vector<int32_t> prefix = test::prefill_prefixes(mode);
  PagedBatch pb = test::make_paged_batch({page, hkv, d, test::prefill_dtype(mode)}, hq, ctx, test::prefill_seed(shape));
  Packed pk = test::pack(pb, prefix);
  kernels::PrefillParams hp = test::prefill_params(pb, pk, mode ? &prefix : nullptr);
  std::vector<float> ref(pk.q.size());
  ref_cpu::prefill_attention(hp, ref.data());
  const GpuOut g = gpu_prefill(hp, pb, pk);
  EXPECT_EQ(g.nonfinite, 0);
  const double tol = test::prefill_tol(mode);
  const std::vector<float> out = test::from_fp16(g.out);
  const double err = test::normalized_error(out, ref);
  EXPECT_LT(err, tol);
  const int64_t row = int64_t(hq) * d;
  const std::vector<int64_t> rows(pk.cu.begin(), pk.cu.end());
  const std::vector<double> per_seq = test::sequence_errors(out, ref, rows, row);
  double worst = 0;
  for (size_t s = 0; s < ctx.size(); ++s) {
    EXPECT_LT(per_seq[s], tol) << "sequence " << s;
    worst = std::max(worst, per_seq[s]);
  }
  // Negative control: the softmax scale off by 1% exceeds the bound (batch, and sequences of >= 63 new tokens).
  const GpuOut bad = gpu_prefill(hp, pb, pk, 1.01f);
  const std::vector<float> bad_out = test::from_fp16(bad.out);
  const double e_bad = test::normalized_error(bad_out, ref);
  EXPECT_GT(e_bad, tol) << "a 1% softmax-scale error passes the bound";
  const std::vector<double> bad_seq = test::sequence_errors(bad_out, ref, rows, row);
  for (size_t s = 0; s < ctx.size(); ++s)
    if (ctx[s] - prefix[s] >= 63) EXPECT_GT(bad_seq[s], tol) << "1% scale error, sequence " << s;
  // Request by request: the sequence alone gives the same bits.
  for (size_t s : {size_t(3), size_t(5), size_t(8)}) {
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
    const GpuOut g1 = gpu_prefill(test::prefill_params(one, ps, mode ? &pre1 : nullptr), one, ps);
    EXPECT_TRUE(std::equal(g1.out.begin(), g1.out.end(), g.out.begin() + pk.cu[s] * row)) << "sequence " << s;
  }
  std::printf("prefill d=%d hq=%d hkv=%d mode=%d page=%d: err %.2e worst sequence %.2e (tol %.1e); scale +1%% %.2e\n",
              d, hq, hkv, mode, page, err, worst, tol, e_bad);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillGpu, ::testing::ValuesIn(test::prefill_shapes()));

TEST(PrefillGpuErrors, BadHeadDim) {
  QS_REQUIRE_GPU();
  kernels::PrefillParams p;
  p.head_dim = 80;
  p.num_q_heads = p.num_kv_heads = 1;
  EXPECT_THAT(kernels::run_prefill(p, 0).message(), ::testing::HasSubstr("head_dim must be 64 or 128, got 80"));
}

}  // namespace
}  // namespace qs
