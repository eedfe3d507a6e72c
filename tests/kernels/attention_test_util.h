// Test fixtures shared by the KV-cache / attention tests (CPU reference tests and GPU tests): random sequences
// written into a paged cache through the reference kv_cache_write, with pages handed out in a shuffled order so
// that paging bugs cannot hide behind contiguous page ids; the shapes the GPU tests run (one list, also read by
// the host-side coverage test of the kernels' dispatch), the attention tolerances (derived in TESTING.md,
// "Attention tolerances") and the perturbations of the negative controls that show the tolerances bite.
#pragma once

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "backends/ref_cpu/attention_kv4.h"
#include "common/test_util.h"
#include "core/dtype.h"
#include "formats/fp8.h"
#include "formats/formats.h"
#include "kernels/attention/attention_params.h"
#include "kernels/kv_cache/kv_cache_params.h"

namespace qs::test {

inline std::vector<float> llama_inv_freq(int head_dim, double theta = 500000.0) {
  std::vector<float> f(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) f[i] = float(1.0 / std::pow(theta, 2.0 * i / head_dim));
  return f;
}

inline std::vector<uint16_t> to_fp16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_fp16(v[i]);
  return h;
}
inline std::vector<float> from_fp16(const std::vector<uint16_t>& h) {
  std::vector<float> v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = fp16_to_float(h[i]);
  return v;
}

// A batch of sequences in a paged cache, plus the write inputs that produced it (so a kernel can redo them).
struct PagedBatch {
  kernels::KvCacheLayout layout;
  int num_q_heads = 0;
  std::vector<int32_t> context_lens;
  int32_t bt_stride = 0;
  std::vector<int32_t> block_table;  // [batch][bt_stride]
  int64_t num_pages = 0;
  std::vector<uint8_t> k_pool, v_pool;
  // Write inputs for all tokens of all sequences, sequence after sequence.
  std::vector<uint16_t> qkv;
  std::vector<int32_t> positions, slots;
  std::vector<float> inv_freq;
  std::vector<uint16_t> q_roped, k_roped, v_copy;  // reference outputs of the write
  int64_t total_tokens() const { return int64_t(positions.size()); }

  kernels::KvWriteParams write_params() {
    kernels::KvWriteParams w;
    w.qkv = qkv.data();
    w.qkv_stride = int64_t(num_q_heads + 2 * layout.num_kv_heads) * layout.head_dim;
    w.num_tokens = int32_t(total_tokens());
    w.num_q_heads = num_q_heads;
    w.layout = layout;
    w.positions = positions.data();
    w.slot_mapping = slots.data();
    w.inv_freq = inv_freq.data();
    w.q_out = q_roped.data();
    w.k_out = k_roped.data();
    w.v_out = v_copy.data();
    w.k_pool = k_pool.data();
    w.v_pool = v_pool.data();
    return w;
  }
};

// Builds `ctx` tokens per sequence (random N(0,1) q/k/v, k with a few outlier channels as real keys have),
// writes them with the reference. Unused pool bytes hold a 0xA5 pattern.
inline PagedBatch make_paged_batch(kernels::KvCacheLayout layout, int num_q_heads, const std::vector<int32_t>& ctx,
                                   uint64_t seed, int extra_pages = 3) {
  PagedBatch pb;
  pb.layout = layout;
  pb.num_q_heads = num_q_heads;
  pb.context_lens = ctx;
  const int ps = layout.page_size, d = layout.head_dim, hkv = layout.num_kv_heads;
  int32_t max_pages = 1;
  int64_t pages = 0;
  for (int32_t c : ctx) {
    max_pages = std::max(max_pages, (c + ps - 1) / ps);
    pages += (c + ps - 1) / ps;
  }
  pb.bt_stride = max_pages + 1;
  pb.num_pages = pages + extra_pages;
  std::vector<int32_t> perm(size_t(pb.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937 rng{uint32_t(seed)};
  std::shuffle(perm.begin(), perm.end(), rng);
  pb.block_table.assign(ctx.size() * pb.bt_stride, -1);
  size_t next = 0;
  for (size_t b = 0; b < ctx.size(); ++b)
    for (int32_t p = 0; p < (ctx[b] + ps - 1) / ps; ++p) pb.block_table[b * pb.bt_stride + p] = perm[next++];
  pb.k_pool.assign(size_t(pb.num_pages * layout.page_bytes()), 0xA5);
  pb.v_pool = pb.k_pool;
  const int width = (num_q_heads + 2 * hkv) * d;
  int64_t total = 0;
  for (int32_t c : ctx) total += c;
  std::vector<float> x = random_normal(size_t(total * width), seed + 1);
  for (int64_t t = 0; t < total; ++t)
    for (int h = 0; h < hkv; ++h) {
      float* k = &x[size_t(t * width + (num_q_heads + h) * d)];
      k[3] *= 8.0f;  // outlier channels (and their rotate-half partners) stress the 4-bit range
      k[d / 2 + 3] *= 8.0f;
      k[d - 1] += 4.0f;
    }
  pb.qkv = to_fp16(x);
  for (size_t b = 0; b < ctx.size(); ++b)
    for (int32_t i = 0; i < ctx[b]; ++i) {
      pb.positions.push_back(i);
      pb.slots.push_back(pb.block_table[b * pb.bt_stride + i / ps] * ps + i % ps);
    }
  pb.inv_freq = llama_inv_freq(d);
  pb.q_roped.assign(size_t(total * num_q_heads * d), 0);
  pb.k_roped.assign(size_t(total * hkv * d), 0);
  pb.v_copy.assign(size_t(total * hkv * d), 0);
  ref_cpu::kv_cache_write(pb.write_params());
  return pb;
}

// Decode parameters that read the last token's roped q of each sequence as the query.
inline std::vector<uint16_t> last_token_queries(const PagedBatch& pb) {
  const int64_t row = int64_t(pb.num_q_heads) * pb.layout.head_dim;
  std::vector<uint16_t> q;
  int64_t t = 0;
  for (int32_t c : pb.context_lens) {
    t += c;
    q.insert(q.end(), pb.q_roped.begin() + (t - 1) * row, pb.q_roped.begin() + t * row);
  }
  return q;
}

// ---------------------------------------------------------------------------------------------------------
// Tolerances of the GPU attention tests: normalized error (test::normalized_error) against the fp64 reference on
// the same cache, for the whole batch and for every sequence. Derived in TESTING.md ("Attention tolerances") as a
// sum of rounding terms in units of u = 2^-11 (fp16 unit roundoff); the measured H200 errors are listed there.
constexpr double kFp16UnitRoundoff = 1.0 / 2048;
// Decode, FP16 or FP8 cache: output rounding (u) + P rounded to fp16 (u) = 2u = 9.8e-4.
constexpr double kDecodeFpTol = 1e-3;
// Decode, KV4 cache: output (u) + P rounding seen through the V codes, the zero being applied in fp32 with the
// unrounded P (2.8u) + fp32 score offset of the 1024-biased K codes (u) = 4.8u = 2.3e-3.
constexpr double kDecodeKv4Tol = 2.5e-3;
// Prefill, FP16 keys/values (no prefix, or an FP16 prefix): output (u) + P (u) = 2u.
constexpr double kPrefillFpTol = 1e-3;
// Prefill with a KV4 or FP8 prefix (dequantized in fp32, then rounded to fp16): + V rounding (u) + K rounding seen
// in the scores (2.5u with the outlier channels of make_paged_batch) = 5.5u = 2.7e-3.
constexpr double kPrefillQuantPrefixTol = 3e-3;

inline double decode_tol(KvDType dt) { return dt == KvDType::kKv4 ? kDecodeKv4Tol : kDecodeFpTol; }
// Prefill mode: 0 no prefix, 1 KV4 prefix, 2 FP16 prefix, 3 FP8 prefix.
inline double prefill_tol(int mode) { return mode == 1 || mode == 3 ? kPrefillQuantPrefixTol : kPrefillFpTol; }

// ---------------------------------------------------------------------------------------------------------
// The shapes of the GPU attention tests. Every kernel instantiation the dispatch can pick (decode: head_dim x
// cache dtype x GQA group <= 8 / > 8; prefill: head_dim x prefix dtype) must appear here: the host-side test
// KernelDispatchCoverage (attention_ref_test.cc) reads the dispatch code and fails on a missing one.
struct DecodeShape {
  int d;
  KvDType dt;
  int hq, hkv;
};
inline const std::vector<DecodeShape>& decode_shapes() {
  static const std::vector<DecodeShape> s = {
      {128, KvDType::kKv4, 4, 4},   {128, KvDType::kKv4, 8, 4},  {128, KvDType::kKv4, 8, 2},
      {128, KvDType::kKv4, 14, 2},  {128, KvDType::kKv4, 16, 2}, {128, KvDType::kKv4, 32, 2},
      {128, KvDType::kKv4, 10, 1},  {64, KvDType::kKv4, 7, 1},   {64, KvDType::kKv4, 4, 2},
      {64, KvDType::kKv4, 12, 1},   {64, KvDType::kKv4, 32, 2},  {128, KvDType::kFp16, 16, 2},
      {128, KvDType::kFp16, 18, 2}, {128, KvDType::kFp16, 4, 4}, {64, KvDType::kFp16, 14, 2},
      {64, KvDType::kFp16, 32, 2},  {128, KvDType::kFp8, 8, 2},  {128, KvDType::kFp8, 14, 2},
      {128, KvDType::kFp8, 4, 4},   {128, KvDType::kFp8, 24, 2}, {64, KvDType::kFp8, 7, 1},
      {64, KvDType::kFp8, 9, 1}};
  return s;
}
// Contexts of every decode batch (one of 1 token, page edges 63/64/65, short 17, long 300 and 1000).
inline const std::vector<int32_t>& decode_contexts() {
  static const std::vector<int32_t> c = {1, 63, 64, 65, 1000, 17, 300};
  return c;
}
inline uint64_t decode_seed(const DecodeShape& s) { return uint64_t(33 + s.hq); }

struct PrefillShape {
  int d, hq, hkv, mode, page;  // mode as prefill_tol
};
inline const std::vector<PrefillShape>& prefill_shapes() {
  static const std::vector<PrefillShape> s = {
      {128, 8, 2, 0, 16}, {64, 7, 1, 0, 16},  {128, 4, 4, 0, 16},  {128, 8, 2, 1, 16}, {64, 7, 1, 1, 16},
      {128, 8, 2, 2, 16}, {128, 8, 2, 3, 16}, {64, 7, 1, 3, 16},   {64, 7, 1, 2, 16},  {128, 8, 2, 1, 64},
      {64, 7, 1, 1, 48},  {128, 8, 2, 2, 48}, {64, 7, 1, 2, 64},   {128, 8, 2, 3, 32}, {64, 7, 1, 3, 48}};
  return s;
}
inline KvDType prefill_dtype(int mode) {
  return mode == 2 ? KvDType::kFp16 : mode == 3 ? KvDType::kFp8 : KvDType::kKv4;
}
inline const std::vector<int32_t>& prefill_contexts() {
  static const std::vector<int32_t> c = {1, 63, 64, 65, 128, 129, 200, 257, 1000};  // tile edges at 64 and 128
  return c;
}
inline std::vector<int32_t> prefill_prefixes(int mode) {
  return mode == 0 ? std::vector<int32_t>(prefill_contexts().size(), 0) : std::vector<int32_t>{0, 62, 16, 1, 0, 128, 77, 130, 640};
}
inline uint64_t prefill_seed(const PrefillShape& s) { return uint64_t(50 + s.d); }

// Decode parameters over pb's host pools (the reference's), all sequences, query q.
inline kernels::DecodeParams decode_params(PagedBatch& pb, const std::vector<uint16_t>& q) {
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

// New tokens (positions >= prefix[s]) of every sequence of pb, packed for prefill.
struct Packed {
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> cu{0};
  int max_q = 0;
};
inline Packed pack(const PagedBatch& pb, const std::vector<int32_t>& prefix) {
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
// Prefill parameters over host memory; `prefix` null: no earlier context.
inline kernels::PrefillParams prefill_params(const PagedBatch& pb, const Packed& pk,
                                            const std::vector<int32_t>* prefix) {
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

// Normalized error of every sequence: rows [row_begin[s], row_begin[s + 1]) of `elems` values each.
inline std::vector<double> sequence_errors(const std::vector<float>& out, const std::vector<float>& ref,
                                           const std::vector<int64_t>& row_begin, int64_t elems) {
  std::vector<double> e;
  for (size_t s = 0; s + 1 < row_begin.size(); ++s) {
    const std::vector<float> o(out.begin() + row_begin[s] * elems, out.begin() + row_begin[s + 1] * elems);
    const std::vector<float> r(ref.begin() + row_begin[s] * elems, ref.begin() + row_begin[s + 1] * elems);
    e.push_back(o.empty() ? 0.0 : normalized_error(o, r));
  }
  return e;
}
inline std::vector<int64_t> decode_rows(size_t batch) {
  std::vector<int64_t> r(batch + 1);
  std::iota(r.begin(), r.end(), 0);
  return r;
}

// Negative control: a copy of `pool` (a V pool) with one value of token `tok` of the sequence whose block-table
// row is `pages` (KV head `kvh`) moved by one quantization step: the element of largest magnitude (KV4: its code
// moved by one towards the middle, i.e. by one scale; FP8: its e4m3 code moved by one towards zero; FP16: its
// value changed by 1/16 of itself, the size of an FP8 step).
inline std::vector<uint8_t> perturb_v_one_step(std::vector<uint8_t> pool, const kernels::KvCacheLayout& l,
                                               const int32_t* pages, int32_t tok, int32_t kvh) {
  std::vector<float> row(size_t(l.head_dim));
  ref_cpu::read_cache_token(pool.data(), l, pages, tok, kvh, row.data());
  int at = 0;
  for (int i = 1; i < l.head_dim; ++i)
    if (std::fabs(row[size_t(i)]) > std::fabs(row[size_t(at)])) at = i;
  uint8_t* block = pool.data() + l.block_offset(pages[tok / l.page_size], kvh);
  uint8_t* data = block + l.data_offset(tok % l.page_size);
  if (l.dtype == KvDType::kKv4) {
    const uint8_t n = fmt4::get_nibble(data, at);
    fmt4::set_nibble(data, at, uint8_t(n >= 8 ? n - 1 : n + 1));
  } else if (l.dtype == KvDType::kFp8) {
    data[at] = uint8_t((data[at] & 0x80) | ((data[at] & 0x7f) - 1));  // largest |value|: code >= 1
  } else {
    uint16_t h;
    std::memcpy(&h, data + 2 * at, 2);
    h = float_to_fp16(fp16_to_float(h) * (1.0f - 1.0f / 16));
    std::memcpy(data + 2 * at, &h, 2);
  }
  return pool;
}

}  // namespace qs::test
