// Test fixtures shared by the KV-cache / attention tests (CPU reference tests and GPU tests): random sequences
// written into a paged cache through the reference kv_cache_write, with pages handed out in a shuffled order so
// that paging bugs cannot hide behind contiguous page ids.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "backends/ref_cpu/attention_kv4.h"
#include "common/test_util.h"
#include "core/dtype.h"
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

}  // namespace qs::test
