// Decode attention over the paged KV cache (see decode_attention.h).
//
// Work item = (sequence b, KV head, chunk of the context); one warp per item, 4 independent warps per CTA.
// A warp walks its chunk in tiles of 16 tokens (a tile never straddles a page) and computes, for the G query
// heads of the KV head's group (rows of the 16-row mma A operand; rows >= G are zero):
//   S[head, tok] = Q K^T:  A = Q (16 heads x 16 dims), B = K^T (16 dims x 8 tokens), two n-tiles per tile
//   O[head, dim] += P V:   A = P (16 heads x 16 tokens, straight from S's accumulators), B = V (16 tokens x 8 dims)
// The dot product over dims is order-free, so the loaders hand out K and V fragments in whatever dim order their
// bit tricks produce; Q is loaded in the matching order (k_dim) and O stored through the matching map (v_dim).
//  K: lane (g, t) loads token g (and 8+g) bytes [t*D/8, (t+1)*D/8): register r = 4j+p of KV4 holds nibbles
//     (8j+p, 8j+p+4) of that slice (lop3 + 0x6400, one hsub2, one hfma2 with the token's scale and -zero*scale).
//  V: lane (g, t) loads tokens 2t, 2t+1, 2t+8, 2t+9, bytes [g*D/16, (g+1)*D/16): a prmt interleaves two tokens so
//     each half2 holds one dim of both tokens, as the B operand wants; register j = dim g*D/8 + j.
// Online softmax in the log2 domain (FA2). Tokens past the chunk end are masked (scores -inf, V scale 0). Loads
// run one to two tiles ahead of the math (two register buffers). With more than one chunk, each warp writes (O/l, m + log2 l) to the workspace
// and merge_kernel combines the chunks.
#include "kernels/attention/decode_attention.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/attention/attn_ptx.cuh"
#include "kernels/common/cuda_check.h"

namespace qs::kernels {
namespace {

using namespace attn;  // NOLINT

constexpr int kWarpsPerCta = 4;
constexpr int kMaxGroup = 16;

template <int N>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    static_assert(N == 1);
    w[0] = __ldg(reinterpret_cast<const uint32_t*>(p));
  }
}

__device__ __forceinline__ uint32_t load_sz(const uint8_t* blk, const KvCacheLayout& L, int tok) {
  const uint32_t s = __ldg(reinterpret_cast<const unsigned short*>(blk + L.scale_offset(tok)));
  const uint32_t z = __ldg(reinterpret_cast<const unsigned short*>(blk + L.zero_offset(tok)));
  return s | (z << 16);
}

// (scale, -zero*scale) of a (scale | zero << 16) word, as fp16.
__device__ __forceinline__ void sz_to_h(uint32_t sz, __half& s, __half& zs) {
  s = __ushort_as_half(uint16_t(sz & 0xffff));
  zs = __float2half_rn(-__half2float(__ushort_as_half(uint16_t(sz >> 16))) * __half2float(s));
}

template <int D, KvDType DT>
struct Loader;

template <int D>
struct Loader<D, KvDType::kKv4> {
  static constexpr int kKWords = D / 32;  // D/8 bytes of a K row per lane
  static constexpr int kVWords = D / 64;  // D/16 bytes of a V row per lane
  struct Raw {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
    uint32_t ksz[2], vsz[4];
  };
  // Physical dims of K register r (low, high half) for lane column t.
  __device__ static int2 k_dim(int t, int r) {
    const int base = t * (D / 4) + 8 * (r / 4) + (r % 4);
    return make_int2(base, base + 4);
  }
  __device__ static void load(Raw& r, const KvCacheLayout& L, const uint8_t* kblk, const uint8_t* vblk, int off,
                              int valid, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int tok = off + nt * 8 + g;
      load_words(kblk + L.data_offset(tok) + t * (D / 8), r.k[nt]);
      r.ksz[nt] = load_sz(kblk, L, tok);
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int i = 2 * t + (q & 1) + 8 * (q >> 1);
      load_words(vblk + L.data_offset(off + i) + g * (D / 16), r.v[q]);
      r.vsz[q] = i < valid ? load_sz(vblk, L, off + i) : 0u;  // masked tokens: scale 0 -> V = 0
    }
  }
  static constexpr int kVGroup = 8;  // V dims produced per loaded word
  __device__ static void k_prep(const Raw& r, int nt, __half2& s2, __half2& zs2) {
    __half s, zs;
    sz_to_h(r.ksz[nt], s, zs);
    s2 = __half2half2(s), zs2 = __half2half2(zs);
  }
  __device__ static uint32_t k_reg(const Raw& r, int nt, int reg, __half2 s2, __half2 zs2) {
    return h2_bits(__hfma2(nibbles_to_h2(r.k[nt][reg / 4], reg % 4), s2, zs2));
  }
  // V fragments of dims kVGroup*w .. +kVGroup-1 for token pair pr (tokens 2t+8pr, 2t+8pr+1).
  __device__ static void v_group(const Raw& r, int pr, int w, uint32_t (&out)[kVGroup]) {
    __half sa, za, sb, zb;
    sz_to_h(r.vsz[2 * pr], sa, za);
    sz_to_h(r.vsz[2 * pr + 1], sb, zb);
    const __half2 s2 = __halves2half2(sa, sb), zs2 = __halves2half2(za, zb);
    const uint32_t x = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x5410);
    const uint32_t y = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x7632);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      out[p] = h2_bits(__hfma2(nibbles_to_h2(x, p), s2, zs2));
      out[4 + p] = h2_bits(__hfma2(nibbles_to_h2(y, p), s2, zs2));
    }
  }
};

template <int D>
struct Loader<D, KvDType::kFp16> {
  static constexpr int kKWords = D / 8;   // D/4 halves of a K row per lane
  static constexpr int kVWords = D / 16;  // D/8 halves of a V row per lane
  struct Raw {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
  };
  __device__ static int2 k_dim(int t, int r) { return make_int2(t * (D / 4) + 2 * r, t * (D / 4) + 2 * r + 1); }
  __device__ static void load(Raw& r, const KvCacheLayout& L, const uint8_t* kblk, const uint8_t* vblk, int off,
                              int valid, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) load_words(kblk + L.data_offset(off + nt * 8 + g) + t * (D / 2), r.k[nt]);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int i = 2 * t + (q & 1) + 8 * (q >> 1);
      load_words(vblk + L.data_offset(off + i) + g * (D / 4), r.v[q]);
      if (i >= valid)
#pragma unroll
        for (int w = 0; w < kVWords; ++w) r.v[q][w] = 0;  // unwritten slots may hold inf/NaN
    }
  }
  static constexpr int kVGroup = 2;
  __device__ static void k_prep(const Raw&, int, __half2&, __half2&) {}
  __device__ static uint32_t k_reg(const Raw& r, int nt, int reg, __half2, __half2) { return r.k[nt][reg]; }
  __device__ static void v_group(const Raw& r, int pr, int w, uint32_t (&out)[kVGroup]) {
    out[0] = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x5410);
    out[1] = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x7632);
  }
};

template <int D, KvDType DT>
struct DecodeWarp {
  using L = Loader<D, DT>;
  uint32_t qa[D / 16][4];
  float o[D / 8][4];
  float m[2], l[2];

  __device__ void step(const typename L::Raw& raw, int tok0, int end, float sl2, int t) {
    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      __half2 s2, zs2;
      L::k_prep(raw, nt, s2, zs2);
#pragma unroll
      for (int c = 0; c < D / 16; ++c)
        mma_f16_16816(s[nt], qa[c], L::k_reg(raw, nt, 2 * c, s2, zs2), L::k_reg(raw, nt, 2 * c + 1, s2, zs2));
    }
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = tok0 + nt * 8 + 2 * t + e;
          float& v = s[nt][2 * hi + e];
          v = tok < end ? v * sl2 : -INFINITY;
          mx = fmaxf(mx, v);
        }
      mx = quad_max(mx);
      const float mnew = fmaxf(m[hi], mx);
      const float corr = exp2f(m[hi] - mnew);
      m[hi] = mnew;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[nt][2 * hi + e];
          v = exp2f(v - mnew);
          sum += v;
        }
      l[hi] = l[hi] * corr + sum;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) o[j][2 * hi] *= corr, o[j][2 * hi + 1] *= corr;
    }
    const uint32_t pa[4] = {pack_h2(s[0][0], s[0][1]), pack_h2(s[0][2], s[0][3]), pack_h2(s[1][0], s[1][1]),
                            pack_h2(s[1][2], s[1][3])};
    constexpr int VG = L::kVGroup;
#pragma unroll
    for (int w = 0; w < D / 8 / VG; ++w) {
      uint32_t v0[VG], v1[VG];
      L::v_group(raw, 0, w, v0);
      L::v_group(raw, 1, w, v1);
#pragma unroll
      for (int i = 0; i < VG; ++i) mma_f16_16816(o[VG * w + i], pa, v0[i], v1[i]);
    }
  }
};

// Register budget: KV4 keeps 3 CTAs (12 warps) per SM resident; the FP16 path needs twice the load buffers.
template <KvDType DT>
constexpr int kMinCtas = DT == KvDType::kKv4 ? 3 : 2;

template <int D, KvDType DT>
__global__ void __launch_bounds__(kWarpsPerCta * 32, kMinCtas<DT>) decode_kernel(const DecodeParams p, const int32_t chunk_tokens,
                                                                    const int32_t max_chunks, float* __restrict__ ws_o,
                                                                    float* __restrict__ ws_m) {
  using L = Loader<D, DT>;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const KvCacheLayout& Lay = p.layout;
  const int hkv = Lay.num_kv_heads;
  const int64_t item = int64_t(blockIdx.x) * kWarpsPerCta + (threadIdx.x >> 5);
  const int chunk = int(item % max_chunks);
  const int64_t bh = item / max_chunks;
  if (bh >= int64_t(p.batch) * hkv) return;
  const int b = int(bh / hkv), kvh = int(bh % hkv);
  const int ctx = p.context_lens[b];
  const int start = chunk * chunk_tokens;
  if (start >= ctx) return;
  const int end = min(ctx, start + chunk_tokens);
  const int group = p.num_q_heads / hkv;
  const int64_t head0 = int64_t(b) * p.num_q_heads + int64_t(kvh) * group;  // first q head row of the group

  DecodeWarp<D, DT> w;
  const uint16_t* qg = p.q + head0 * D;
#pragma unroll
  for (int c = 0; c < D / 16; ++c)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int head = g + 8 * hi;
        const int2 dd = L::k_dim(t, 2 * c + rr);
        uint32_t v = 0;
        if (head < group) v = uint32_t(qg[head * D + dd.x]) | (uint32_t(qg[head * D + dd.y]) << 16);
        w.qa[c][hi + 2 * rr] = v;
      }
#pragma unroll
  for (int j = 0; j < D / 8; ++j) w.o[j][0] = w.o[j][1] = w.o[j][2] = w.o[j][3] = 0.0f;
  w.m[0] = w.m[1] = -INFINITY;
  w.l[0] = w.l[1] = 0.0f;
  const float sl2 = p.softmax_scale * 1.4426950408889634f;

  const int32_t* bt = p.block_table + int64_t(b) * p.block_table_stride;
  auto load = [&](typename L::Raw& r, int tok0) {
    const int64_t blk = Lay.block_offset(bt[tok0 / Lay.page_size], kvh);
    L::load(r, Lay, p.k_pool + blk, p.v_pool + blk, tok0 % Lay.page_size, end - tok0, g, t);
  };
  typename L::Raw r0, r1;
  load(r0, start);
  if (start + 16 < end) load(r1, start + 16);
  for (int tok0 = start; tok0 < end; tok0 += 32) {
    w.step(r0, tok0, end, sl2, t);
    if (tok0 + 32 < end) load(r0, tok0 + 32);  // consumed after the next step: one step of math hides it
    if (tok0 + 16 < end) {
      w.step(r1, tok0 + 16, end, sl2, t);
      if (tok0 + 48 < end) load(r1, tok0 + 48);
    }
  }

#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int head = g + 8 * hi;
    const float lsum = quad_sum(w.l[hi]);
    if (head >= group) continue;
    const float inv = 1.0f / lsum;
    if (max_chunks == 1) {
      __half* out = reinterpret_cast<__half*>(p.out) + (head0 + head) * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        out[(D / 8) * (2 * t) + j] = __float2half_rn(w.o[j][2 * hi] * inv);
        out[(D / 8) * (2 * t + 1) + j] = __float2half_rn(w.o[j][2 * hi + 1] * inv);
      }
    } else {
      const int64_t row = (head0 + head) * max_chunks + chunk;
      float* out = ws_o + row * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        out[(D / 8) * (2 * t) + j] = w.o[j][2 * hi] * inv;
        out[(D / 8) * (2 * t + 1) + j] = w.o[j][2 * hi + 1] * inv;
      }
      if (t == 0) ws_m[row] = w.m[hi] + log2f(lsum);
    }
  }
}

// One CTA of D threads per (sequence, query head): weighted sum of the chunks' normalized partial outputs.
template <int D>
__global__ void __launch_bounds__(D) merge_kernel(const DecodeParams p, const int32_t chunk_tokens,
                                                  const int32_t max_chunks, const float* __restrict__ ws_o,
                                                  const float* __restrict__ ws_m) {
  const int64_t row = blockIdx.x;  // b * num_q_heads + h
  const int b = int(row / p.num_q_heads);
  const int n = (p.context_lens[b] + chunk_tokens - 1) / chunk_tokens;
  const float* lse = ws_m + row * max_chunks;
  float mx = -INFINITY;
  for (int c = 0; c < n; ++c) mx = fmaxf(mx, lse[c]);
  float acc = 0.0f, wsum = 0.0f;
  for (int c = 0; c < n; ++c) {
    const float wgt = exp2f(lse[c] - mx);
    wsum += wgt;
    acc += wgt * ws_o[(row * max_chunks + c) * D + threadIdx.x];
  }
  reinterpret_cast<__half*>(p.out)[row * D + threadIdx.x] = __float2half_rn(acc / wsum);
}

void check_shape(int32_t num_q_heads, const KvCacheLayout& l) {
  QS_CHECK(l.head_dim == 64 || l.head_dim == 128) << "decode attention: head_dim must be 64 or 128, got "
                                                  << l.head_dim;
  QS_CHECK(l.page_size > 0 && l.page_size % 16 == 0)
      << "decode attention: page_size must be a positive multiple of 16, got " << l.page_size;
  QS_CHECK(l.num_kv_heads > 0 && num_q_heads % l.num_kv_heads == 0)
      << "decode attention: num_q_heads " << num_q_heads << " must be a multiple of num_kv_heads " << l.num_kv_heads;
  QS_CHECK(num_q_heads / l.num_kv_heads <= kMaxGroup)
      << "decode attention: GQA group " << num_q_heads / l.num_kv_heads << " > " << kMaxGroup << " not supported";
}

template <int D, KvDType DT>
Status launch(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream) {
  float* ws_o = static_cast<float*>(workspace);
  float* ws_m = ws_o + int64_t(p.batch) * p.num_q_heads * plan.max_chunks * D;
  const int64_t items = int64_t(p.batch) * p.layout.num_kv_heads * plan.max_chunks;
  const int64_t ctas = (items + kWarpsPerCta - 1) / kWarpsPerCta;
  decode_kernel<D, DT><<<unsigned(ctas), kWarpsPerCta * 32, 0, stream>>>(p, plan.chunk_tokens, plan.max_chunks,
                                                                          ws_o, ws_m);
  QS_CUDA_RETURN(cudaGetLastError());
  if (plan.max_chunks > 1) {
    merge_kernel<D><<<unsigned(int64_t(p.batch) * p.num_q_heads), D, 0, stream>>>(p, plan.chunk_tokens,
                                                                                   plan.max_chunks, ws_o, ws_m);
    QS_CUDA_RETURN(cudaGetLastError());
  }
  return Status::ok();
}

}  // namespace

DecodePlan plan_decode(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                       int32_t num_sms) {
  check_shape(num_q_heads, layout);
  QS_CHECK(batch > 0 && max_context > 0) << "decode attention: empty batch or context";
  const int64_t pairs = int64_t(batch) * layout.num_kv_heads;
  const int64_t target_warps = int64_t(std::max(num_sms, 1)) * 32;  // ~3 waves of resident warps
  const int64_t chunks = std::max<int64_t>(1, (target_warps + pairs - 1) / pairs);
  int64_t chunk = (max_context + chunks - 1) / chunks;
  chunk = std::max<int64_t>(256, (chunk + 15) / 16 * 16);  // long enough to amortize the partial write
  DecodePlan plan;
  if (chunk >= max_context) {
    plan.max_chunks = 1;
    plan.chunk_tokens = (max_context + 15) / 16 * 16;
    plan.workspace_bytes = 0;
  } else {
    plan.chunk_tokens = int32_t(chunk);
    plan.max_chunks = int32_t((max_context + chunk - 1) / chunk);
    plan.workspace_bytes = size_t(batch) * num_q_heads * plan.max_chunks * (layout.head_dim + 1) * sizeof(float);
  }
  return plan;
}

Status run_decode(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream) {
  if (p.batch == 0) return Status::ok();
  if (plan.max_chunks > 1 && workspace == nullptr) return Status::error("decode attention: workspace required");
  const int d = p.layout.head_dim;
  const bool kv4 = p.layout.dtype == KvDType::kKv4;
  if (d == 128) return kv4 ? launch<128, KvDType::kKv4>(p, plan, workspace, stream)
                           : launch<128, KvDType::kFp16>(p, plan, workspace, stream);
  if (d == 64) return kv4 ? launch<64, KvDType::kKv4>(p, plan, workspace, stream)
                          : launch<64, KvDType::kFp16>(p, plan, workspace, stream);
  return Status::error("decode attention: head_dim must be 64 or 128");
}

}  // namespace qs::kernels
