// Tests of the CPU references for the KV cache write and attention (backends/ref_cpu/attention_kv4) against
// straightforward double-precision formulas, plus composition: paged == contiguous, page size 16 == 64, prefill
// of a chunk == decode token by token. Also, for the GPU attention tests (which cannot run here): their
// tolerances bite (the negative controls, computed on the reference, exceed twice the bound on the very inputs of
// the GPU tests, so the kernel's perturbed output exceeds the bound even after its own rounding error), and their
// shape list covers every kernel instantiation that the dispatch code of run_decode / run_prefill can pick.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

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

using test::decode_params;

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

// The GPU tests' negative controls, on the reference: ref(perturbed) vs ref must exceed twice the bound, so that
// the kernel run on the perturbed input (off from ref(perturbed) by at most the bound) exceeds the bound.
TEST(AttentionTolerances, DecodeNegativeControlsExceedTwiceTheBoundOnTheGpuTestInputs) {
  double min_ratio_scale = 1e9, min_ratio_v = 1e9;
  for (const test::DecodeShape& sh : test::decode_shapes()) {
    const std::vector<int32_t>& ctx = test::decode_contexts();
    PagedBatch a = test::make_paged_batch({16, sh.hkv, sh.d, sh.dt}, sh.hq, ctx, test::decode_seed(sh));
    const auto q = test::last_token_queries(a);
    std::vector<float> ref(q.size()), bad(q.size()), badv(q.size());
    kernels::DecodeParams p = decode_params(a, q);
    ref_cpu::decode_attention(p, ref.data());
    kernels::DecodeParams ps = p;
    ps.softmax_scale = p.softmax_scale * 1.01f;
    ref_cpu::decode_attention(ps, bad.data());
    const std::vector<uint8_t> vbad = test::perturb_v_one_step(a.v_pool, a.layout, a.block_table.data(), 0, 0);
    kernels::DecodeParams pv = p;
    pv.v_pool = vbad.data();
    ref_cpu::decode_attention(pv, badv.data());
    const double tol = test::decode_tol(sh.dt);
    const int64_t row = int64_t(sh.hq) * sh.d;
    const auto rows = test::decode_rows(ctx.size());
    const double e = test::normalized_error(bad, ref);
    EXPECT_GT(e, 2 * tol) << "d " << sh.d << " " << kv_dtype_name(sh.dt) << " hq " << sh.hq << " hkv " << sh.hkv;
    const auto per_seq = test::sequence_errors(bad, ref, rows, row);
    for (size_t s = 0; s < ctx.size(); ++s)
      if (ctx[s] >= 63) {
        EXPECT_GT(per_seq[s], 2 * tol) << "decode d " << sh.d << " " << kv_dtype_name(sh.dt) << " hq " << sh.hq
                                       << " sequence " << s;
        min_ratio_scale = std::min(min_ratio_scale, per_seq[s] / tol);
      }
    const double ev = test::sequence_errors(badv, ref, rows, row)[0];
    EXPECT_GT(ev, 2 * tol) << "one V step, d " << sh.d << " " << kv_dtype_name(sh.dt) << " hq " << sh.hq;
    min_ratio_v = std::min(min_ratio_v, ev / tol);
  }
  {  // attention_backend_gpu_test's batch: 1% scale error over the whole batch.
    const std::vector<int32_t> ctx = {65, 1000, 1};
    PagedBatch a = test::make_paged_batch({64, 2, 128, KvDType::kKv4}, 8, ctx, 77);
    const auto q = test::last_token_queries(a);
    std::vector<float> ref(q.size()), bad(q.size());
    kernels::DecodeParams p = decode_params(a, q);
    ref_cpu::decode_attention(p, ref.data());
    p.softmax_scale *= 1.01f;
    ref_cpu::decode_attention(p, bad.data());
    const double e = test::normalized_error(bad, ref);
    EXPECT_GT(e, 2 * test::kDecodeKv4Tol) << "backend test batch";
    std::printf("backend test batch: 1%% scale error %.2e (bound %.1e)\n", e, test::kDecodeKv4Tol);
  }
  std::printf("decode: smallest negative control / bound: softmax scale +1%% %.1f, one V step %.1f\n",
              min_ratio_scale, min_ratio_v);
}

// The same for prefill, on one shape per prefix mode (the reference costs seconds per batch here); the page size
// does not change the reference's result.
TEST(AttentionTolerances, PrefillNegativeControlExceedsTwiceTheBoundOnTheGpuTestInputs) {
  double min_ratio_scale = 1e9;
  std::set<int> done;
  for (const test::PrefillShape& sh : test::prefill_shapes()) {
    if (!done.insert(sh.mode).second) continue;
    const std::vector<int32_t>& ctx = test::prefill_contexts();
    const std::vector<int32_t> prefix = test::prefill_prefixes(sh.mode);
    PagedBatch pb = test::make_paged_batch({sh.page, sh.hkv, sh.d, test::prefill_dtype(sh.mode)}, sh.hq, ctx,
                                           test::prefill_seed(sh));
    const test::Packed pk = test::pack(pb, prefix);
    kernels::PrefillParams p = test::prefill_params(pb, pk, sh.mode ? &prefix : nullptr);
    std::vector<float> ref(pk.q.size()), bad(pk.q.size());
    ref_cpu::prefill_attention(p, ref.data());
    p.softmax_scale *= 1.01f;
    ref_cpu::prefill_attention(p, bad.data());
    const double tol = test::prefill_tol(sh.mode);
    EXPECT_GT(test::normalized_error(bad, ref), 2 * tol) << "prefill d " << sh.d << " mode " << sh.mode;
    const auto per_seq =
        test::sequence_errors(bad, ref, std::vector<int64_t>(pk.cu.begin(), pk.cu.end()), int64_t(sh.hq) * sh.d);
    for (size_t s = 0; s < ctx.size(); ++s)
      if (ctx[s] - prefix[s] >= 63) {
        EXPECT_GT(per_seq[s], 2 * tol) << "prefill d " << sh.d << " mode " << sh.mode << " sequence " << s;
        min_ratio_scale = std::min(min_ratio_scale, per_seq[s] / tol);
      }
  }
  std::printf("prefill: smallest negative control / bound: softmax scale +1%% %.1f\n", min_ratio_scale);
}

// Every kernel instantiation that run_decode / run_prefill can pick has a GPU test case: the dispatch code is read
// from the source (decode: launch<D, KvDType::kX, NH, ...> with NH = 2 for GQA groups over 8; prefill:
// launch<D> for each head_dim, and the prefix dtypes load_kv_tile handles), and each (D, dtype, NH) / (D, prefix
// dtype) must appear in test::decode_shapes() / test::prefill_shapes().
std::string read_source(const std::string& rel) {
  namespace fs = std::filesystem;
  // __FILE__ is tests/kernels/<this file> as the compiler was given it: absolute, or (ccache base_dir) relative
  // to the build folder, which is where ctest runs the binary; else try beside the binary's folder.
  const fs::path root = fs::path(__FILE__).parent_path().parent_path().parent_path();
  fs::path f = root / rel;
  if (!fs::exists(f) && root.is_relative()) f = fs::read_symlink("/proc/self/exe").parent_path() / root / rel;
  std::ifstream in(f);
  EXPECT_TRUE(in.good()) << "cannot read " << f << " (this test reads the dispatch code next to its own source)";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

KvDType dtype_named(const std::string& n) {
  if (n == "Kv4") return KvDType::kKv4;
  if (n == "Fp16") return KvDType::kFp16;
  if (n == "Fp8") return KvDType::kFp8;
  ADD_FAILURE() << "unknown KvDType::k" << n << " in the dispatch code";
  return KvDType::kFp16;
}

TEST(KernelDispatchCoverage, EveryDecodeInstantiationHasAGpuTestCase) {
  const std::string src = read_source("src/kernels/attention/decode_attention.cu");
  const size_t at = src.find("Status run_decode(");
  ASSERT_NE(at, std::string::npos);
  const std::string dispatch = src.substr(at);
  ASSERT_NE(dispatch.find("p.num_q_heads / p.layout.num_kv_heads > 8"), std::string::npos)
      << "the GQA split of run_decode changed: update the NH mapping of this test";
  std::set<std::tuple<int, KvDType, int>> launched, tested;
  const std::regex re(R"(launch<(\d+), KvDType::k(\w+), (\d+))");
  for (auto it = std::sregex_iterator(dispatch.begin(), dispatch.end(), re); it != std::sregex_iterator(); ++it)
    launched.insert({std::stoi((*it)[1]), dtype_named((*it)[2]), std::stoi((*it)[3])});
  EXPECT_GE(launched.size(), 12u) << "fewer instantiations than expected: the pattern no longer matches";
  for (const test::DecodeShape& s : test::decode_shapes()) tested.insert({s.d, s.dt, s.hq / s.hkv > 8 ? 2 : 1});
  for (const auto& [d, dt, nh] : launched)
    EXPECT_TRUE(tested.count({d, dt, nh}))
        << "decode_attention.cu launches head_dim " << d << " " << kv_dtype_name(dt) << " with "
        << (nh == 2 ? "GQA groups 9..16" : "GQA groups 1..8")
        << ", but no shape in attention_test_util.h decode_shapes() runs it on the GPU";
  std::printf("decode: %zu instantiations, all with a GPU test case\n", launched.size());
}

TEST(KernelDispatchCoverage, EveryPrefillPathHasAGpuTestCase) {
  const std::string src = read_source("src/kernels/attention/prefill_attention.cu");
  std::set<int> dims;
  const std::regex launch_re(R"(launch<(\d+)>)");
  const size_t at = src.find("Status run_prefill(");
  ASSERT_NE(at, std::string::npos);
  const std::string dispatch = src.substr(at);
  for (auto it = std::sregex_iterator(dispatch.begin(), dispatch.end(), launch_re); it != std::sregex_iterator(); ++it)
    dims.insert(std::stoi((*it)[1]));
  EXPECT_EQ(dims, (std::set<int>{64, 128}));
  // Prefix dtypes: the ones load_kv_tile branches on, plus KV4 (its fall-through), plus no prefix.
  std::set<int> modes = {0, 1};
  const std::regex dt_re(R"(L\.dtype == KvDType::k(\w+))");
  for (auto it = std::sregex_iterator(src.begin(), src.end(), dt_re); it != std::sregex_iterator(); ++it) {
    const KvDType dt = dtype_named((*it)[1]);
    modes.insert(dt == KvDType::kFp16 ? 2 : dt == KvDType::kFp8 ? 3 : 1);
  }
  EXPECT_EQ(modes, (std::set<int>{0, 1, 2, 3}));
  std::set<std::pair<int, int>> tested;
  std::set<int> pages;
  for (const test::PrefillShape& s : test::prefill_shapes()) {
    tested.insert({s.d, s.mode});
    if (s.mode) pages.insert(s.page);
  }
  for (int d : dims)
    for (int m : modes)
      EXPECT_TRUE(tested.count({d, m})) << "prefill head_dim " << d << " mode " << m
                                        << " (0 none, 1 KV4, 2 FP16, 3 FP8 prefix) has no GPU test case";
  EXPECT_TRUE(pages.count(16) && pages.count(64) && pages.count(48))
      << "prefix pages: 16, 64 and a size that is not a power of two";
}

}  // namespace
}  // namespace qs
