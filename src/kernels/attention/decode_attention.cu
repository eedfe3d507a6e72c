// Decode attention over the paged KV cache (see decode_attention.h).
//
// Work item = (sequence b, KV head, chunk of the context); one warp per item, 4 independent warps per CTA.
// A warp walks its chunk in tiles of 16 tokens (a tile never straddles a page) and serves all G query heads of the
// KV head's group with FP16 mma.m16n8k16, heads on the N side (8 per n-tile; NH = 2 n-tiles for G > 8):
//   S^T[tok, head] = K Q^T:     A = K (16 tokens x 16 dims, from registers), B = Q^T (16 dims x 8 heads)
//   O^T[dim, head] += V^T P^T:  A = V^T (16 dims x 16 tokens, from registers), B = P^T (movmatrix of S^T)
// The dot product over dims is order-free, so the loaders hand out K and V fragments in whatever dim order their
// bit tricks produce; Q is loaded in the matching order (k_dim) and O stored through the matching map.
//  K: lane (g, t) loads tokens g and 8+g, bytes [t*D/8, (t+1)*D/8): register r = 4j+p of KV4 holds nibbles
//     (8j+p, 8j+p+4) of that slice as exact fp16 codes (lop3 + 0x6400, one hsub2); scale/zero in fp32 (Loader).
//  V: lane (g, t) loads tokens 2t, 2t+1, 2t+8, 2t+9, bytes [g*D/16, (g+1)*D/16): a prmt interleaves two tokens so
//     each half2 holds one dim of both tokens, as the A operand wants; register j = dim g*D/8 + j.
// Online softmax in the log2 domain (FA2); a lane's S columns are its O columns (heads 2t, 2t+1). Tokens past the
// chunk end are masked (scores -inf, V scale 0). The block table is read 32 pages at a time into lanes; tile loads
// run 2-3 tiles ahead of the math in register buffers. With more than one chunk, each warp writes (O/l, m + log2 l)
// to the workspace and merge_kernel combines the chunks.
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

__device__ __forceinline__ float lo_f(uint32_t sz) { return __half2float(__ushort_as_half(uint16_t(sz & 0xffff))); }
__device__ __forceinline__ float hi_f(uint32_t sz) { return __half2float(__ushort_as_half(uint16_t(sz >> 16))); }

template <int D, KvDType DT>
struct Loader;

// KV4: the fragments are the raw codes 0..15 as exact fp16 (lop3 + 0x6400, one hsub2); scale and zero are applied
// in fp32 outside the mma: S = s_k (codes . q) - s_k z_k sum(q), and P is pre-multiplied by the V scale while the
// zero's share (sum_tok p s_v z_v) is accumulated per head and subtracted at the end. Fewer instructions than an
// hfma2 per pair and no fp16 rounding of the dequantized values.
template <int D>
struct Loader<D, KvDType::kKv4> {
  static constexpr bool kCodes = true;
  static constexpr int kKWords = D / 32;  // D/8 bytes of a K row per lane
  static constexpr int kVWords = D / 64;  // D/16 bytes of a V row per lane
  struct Raw {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
    uint32_t ksz[2], vsz[2];  // (scale | zero << 16) of tokens g and g+8
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
      r.vsz[nt] = nt * 8 + g < valid ? load_sz(vblk, L, tok) : 0u;  // masked tokens: V scale and zero 0
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int i = 2 * t + (q & 1) + 8 * (q >> 1);
      load_words(vblk + L.data_offset(off + i) + g * (D / 16), r.v[q]);
    }
  }
  static constexpr int kVGroup = 8;  // V dims produced per loaded word
  __device__ static uint32_t k_reg(const Raw& r, int nt, int reg) {
    return h2_bits(nibbles_to_h2(r.k[nt][reg / 4], reg % 4));
  }
  // V fragments (codes) of dims kVGroup*w .. +kVGroup-1 for token pair pr (tokens 2t+8pr, 2t+8pr+1).
  __device__ static void v_group(const Raw& r, int pr, int w, uint32_t (&out)[kVGroup]) {
    const uint32_t x = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x5410);
    const uint32_t y = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x7632);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      out[p] = h2_bits(nibbles_to_h2(x, p));
      out[4 + p] = h2_bits(nibbles_to_h2(y, p));
    }
  }
};

template <int D>
struct Loader<D, KvDType::kFp16> {
  static constexpr bool kCodes = false;
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
  __device__ static uint32_t k_reg(const Raw& r, int nt, int reg) { return r.k[nt][reg]; }
  __device__ static void v_group(const Raw& r, int pr, int w, uint32_t (&out)[kVGroup]) {
    out[0] = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x5410);
    out[1] = prmt(r.v[2 * pr][w], r.v[2 * pr + 1][w], 0x7632);
  }
};

// The block-table row of a chunk, 32 entries at a time in the warp's lanes (one load per 32 pages, off the
// critical path of the tile loads).
struct PageIds {
  const int32_t* bt;
  int base, npages, reg;
  __device__ void fill(int lane) { reg = base + lane < npages ? bt[base + lane] : 0; }
  __device__ int get(int idx, int lane) {  // idx is warp-uniform and never decreases
    while (idx - base >= 32) {
      base += 32;
      fill(lane);
    }
    return __shfl_sync(0xffffffffu, reg, idx - base);
  }
};

// One warp's state. Transposed formulation (query heads on the mma N side, 8 per n-tile, NH n-tiles):
//   S^T[tok, head] = K Q^T:  A = K (16 tokens x 16 dims, registers), B = Q^T (16 dims x 8 heads)
//   O^T[dim, head] += V^T P^T: A = V^T (16 dims x 16 tokens, registers), B = P^T (movmatrix-transposed S^T)
// so a lane's S columns (heads 2t, 2t+1) are its O columns: the softmax needs no data exchange but a max over g.
template <int D, KvDType DT, int NH>
struct DecodeWarp {
  using L = Loader<D, DT>;
  uint32_t qb[NH][D / 16][2];
  float o[NH][D / 16][4];
  float m[NH][2], l[NH][2];
  float sumq[NH][2];  // KV4: sum of the (fp16) query of heads 2t, 2t+1
  float zc[NH][2];    // KV4: sum_tok p_tok * s_v * z_v of heads 2t, 2t+1 (this lane's tokens), to subtract

  __device__ void step(const typename L::Raw& raw, int tok0, int end, float sl2, int g) {
    float s[NH][4];
#pragma unroll
    for (int nh = 0; nh < NH; ++nh) s[nh][0] = s[nh][1] = s[nh][2] = s[nh][3] = 0.0f;
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      const uint32_t a[4] = {L::k_reg(raw, 0, 2 * c), L::k_reg(raw, 1, 2 * c), L::k_reg(raw, 0, 2 * c + 1),
                             L::k_reg(raw, 1, 2 * c + 1)};
#pragma unroll
      for (int nh = 0; nh < NH; ++nh) mma_f16_16816(s[nh], a, qb[nh][c][0], qb[nh][c][1]);
    }
    float vs[2] = {1.0f, 1.0f}, vz[2] = {0.0f, 0.0f};
    if constexpr (L::kCodes) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {  // token g (nt 0) and g+8 (nt 1): S = s_k * acc - s_k z_k sum(q)
        const float ks = lo_f(raw.ksz[nt]), kzs = ks * hi_f(raw.ksz[nt]);
#pragma unroll
        for (int nh = 0; nh < NH; ++nh)
#pragma unroll
          for (int e = 0; e < 2; ++e) s[nh][2 * nt + e] = s[nh][2 * nt + e] * ks - kzs * sumq[nh][e];
        vs[nt] = lo_f(raw.vsz[nt]);
        vz[nt] = hi_f(raw.vsz[nt]);
      }
    }
    const bool ok0 = tok0 + g < end, ok1 = tok0 + g + 8 < end;
    uint32_t pb[NH][2];
#pragma unroll
    for (int nh = 0; nh < NH; ++nh) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {  // head column 2t + e: tokens g (s[e]) and g + 8 (s[2 + e])
        const float v0 = ok0 ? s[nh][e] * sl2 : -INFINITY;
        const float v1 = ok1 ? s[nh][2 + e] * sl2 : -INFINITY;
        float mx = fmaxf(v0, v1);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float mnew = fmaxf(m[nh][e], mx);
        const float corr = exp2f(m[nh][e] - mnew);
        m[nh][e] = mnew;
        const float p0 = exp2f(v0 - mnew), p1 = exp2f(v1 - mnew);
        l[nh][e] = l[nh][e] * corr + p0 + p1;
        s[nh][e] = p0 * vs[0];  // P pre-scaled by the V scale of its token (1 for FP16)
        s[nh][2 + e] = p1 * vs[1];
        if constexpr (L::kCodes) zc[nh][e] = zc[nh][e] * corr + s[nh][e] * vz[0] + s[nh][2 + e] * vz[1];
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) o[nh][mt][e] *= corr, o[nh][mt][2 + e] *= corr;
      }
      pb[nh][0] = movmatrix_trans(pack_h2(s[nh][0], s[nh][1]));  // tokens 0..7 x heads -> B rows 0..7
      pb[nh][1] = movmatrix_trans(pack_h2(s[nh][2], s[nh][3]));  // tokens 8..15
    }
    constexpr int VG = L::kVGroup;
#pragma unroll
    for (int w = 0; w < D / 8 / VG; ++w) {
      uint32_t v0[VG], v1[VG];
      L::v_group(raw, 0, w, v0);
      L::v_group(raw, 1, w, v1);
#pragma unroll
      for (int i = 0; i < VG / 2; ++i) {
        const uint32_t a[4] = {v0[2 * i], v0[2 * i + 1], v1[2 * i], v1[2 * i + 1]};
#pragma unroll
        for (int nh = 0; nh < NH; ++nh) mma_f16_16816(o[nh][w * VG / 2 + i], a, pb[nh][0], pb[nh][1]);
      }
    }
  }
};

// Register budget: KV4 keeps 3 CTAs (12 warps) per SM resident with 3 tiles of loads in flight per warp; FP16
// tiles are 4x larger, so 2 in flight.
template <KvDType DT, int NH>
constexpr int kMinCtas = DT == KvDType::kKv4 && NH == 1 ? 3 : 2;
template <KvDType DT>
constexpr int kBufs = DT == KvDType::kKv4 ? 3 : 2;

template <int D, KvDType DT, int NH>
__global__ void __launch_bounds__(kWarpsPerCta * 32, kMinCtas<DT, NH>)
    decode_kernel(const DecodeParams p, const int32_t chunk_tokens, const int32_t max_chunks, float* __restrict__ ws_o,
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

  DecodeWarp<D, DT, NH> w;
  const uint16_t* qg = p.q + head0 * D;
#pragma unroll
  for (int nh = 0; nh < NH; ++nh)
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int head = nh * 8 + g;
        const int2 dd = L::k_dim(t, 2 * c + rr);
        uint32_t v = 0;
        if (head < group) v = uint32_t(qg[head * D + dd.x]) | (uint32_t(qg[head * D + dd.y]) << 16);
        w.qb[nh][c][rr] = v;
      }
#pragma unroll
  for (int nh = 0; nh < NH; ++nh) {
#pragma unroll
    for (int mt = 0; mt < D / 16; ++mt) w.o[nh][mt][0] = w.o[nh][mt][1] = w.o[nh][mt][2] = w.o[nh][mt][3] = 0.0f;
    w.m[nh][0] = w.m[nh][1] = -INFINITY;
    w.l[nh][0] = w.l[nh][1] = 0.0f;
    w.zc[nh][0] = w.zc[nh][1] = 0.0f;
    // sum(q) of head nh*8+g over this lane's dims, completed over the quad, then fetched for heads 2t, 2t+1.
    float part = 0.0f;
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float2 f = __half22float2(bits_h2(w.qb[nh][c][rr]));
        part += f.x + f.y;
      }
    part += __shfl_xor_sync(0xffffffffu, part, 1);
    part += __shfl_xor_sync(0xffffffffu, part, 2);
    w.sumq[nh][0] = __shfl_sync(0xffffffffu, part, (2 * t) * 4);
    w.sumq[nh][1] = __shfl_sync(0xffffffffu, part, (2 * t + 1) * 4);
  }
  const float sl2 = p.softmax_scale * 1.4426950408889634f;

  PageIds pages{p.block_table + int64_t(b) * p.block_table_stride, start / Lay.page_size,
                (end + Lay.page_size - 1) / Lay.page_size, 0};
  pages.fill(lane);
  auto load = [&](typename L::Raw& r, int tok0) {
    const int64_t blk = Lay.block_offset(pages.get(tok0 / Lay.page_size, lane), kvh);
    L::load(r, Lay, p.k_pool + blk, p.v_pool + blk, tok0 % Lay.page_size, end - tok0, g, t);
  };
  constexpr int kB = kBufs<DT>;
  typename L::Raw r[kB];
#pragma unroll
  for (int i = 0; i < kB; ++i)
    if (start + 16 * i < end) load(r[i], start + 16 * i);
  for (int tok0 = start; tok0 < end; tok0 += 16 * kB) {
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      const int tk = tok0 + 16 * i;
      if (tk < end) {
        w.step(r[i], tk, end, sl2, g);
        if (tk + 16 * kB < end) load(r[i], tk + 16 * kB);
      }
    }
  }

#pragma unroll
  for (int nh = 0; nh < NH; ++nh)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float lsum = w.l[nh][e], zsum = w.zc[nh][e];
#pragma unroll
      for (int x = 4; x < 32; x <<= 1) {
        lsum += __shfl_xor_sync(0xffffffffu, lsum, x);
        zsum += __shfl_xor_sync(0xffffffffu, zsum, x);
      }
      const int head = nh * 8 + 2 * t + e;
      if (head >= group) continue;
      const float inv = 1.0f / lsum;
      if (max_chunks == 1) {
        __half2* out = reinterpret_cast<__half2*>(p.out + (head0 + head) * D + (D / 8) * g);
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt)
          out[mt] = __floats2half2_rn((w.o[nh][mt][e] - zsum) * inv, (w.o[nh][mt][2 + e] - zsum) * inv);
      } else {
        const int64_t row = (head0 + head) * max_chunks + chunk;
        float2* out = reinterpret_cast<float2*>(ws_o + row * D + (D / 8) * g);
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt)
          out[mt] = make_float2((w.o[nh][mt][e] - zsum) * inv, (w.o[nh][mt][2 + e] - zsum) * inv);
        if (g == 0) ws_m[row] = w.m[nh][e] + log2f(lsum);
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

template <int D, KvDType DT, int NH>
Status launch(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream) {
  float* ws_o = static_cast<float*>(workspace);
  float* ws_m = ws_o + int64_t(p.batch) * p.num_q_heads * plan.max_chunks * D;
  const int64_t items = int64_t(p.batch) * p.layout.num_kv_heads * plan.max_chunks;
  const int64_t ctas = (items + kWarpsPerCta - 1) / kWarpsPerCta;
  decode_kernel<D, DT, NH><<<unsigned(ctas), kWarpsPerCta * 32, 0, stream>>>(p, plan.chunk_tokens, plan.max_chunks,
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
  const int64_t target_warps = int64_t(std::max(num_sms, 1)) * 32;  // ~2 waves of resident warps
  const int64_t chunks = std::max<int64_t>(1, (target_warps + pairs - 1) / pairs);
  int64_t chunk = (max_context + chunks - 1) / chunks;
  chunk = std::max<int64_t>(128, (chunk + 15) / 16 * 16);  // long enough to amortize the partial write
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
  if (plan.chunk_tokens <= 0 || plan.chunk_tokens % 16 != 0 || plan.max_chunks < 1)
    return Status::error("decode attention: plan chunk_tokens must be a positive multiple of 16");
  const int d = p.layout.head_dim;
  const bool kv4 = p.layout.dtype == KvDType::kKv4;
  if (p.layout.num_kv_heads <= 0 || p.num_q_heads % p.layout.num_kv_heads != 0 ||
      p.num_q_heads / p.layout.num_kv_heads > kMaxGroup)
    return Status::error("decode attention: unsupported GQA group");
  const bool wide = p.num_q_heads / p.layout.num_kv_heads > 8;
  if (d == 128) {
    if (kv4) return wide ? launch<128, KvDType::kKv4, 2>(p, plan, workspace, stream)
                         : launch<128, KvDType::kKv4, 1>(p, plan, workspace, stream);
    return wide ? launch<128, KvDType::kFp16, 2>(p, plan, workspace, stream)
                : launch<128, KvDType::kFp16, 1>(p, plan, workspace, stream);
  }
  if (d == 64) {
    if (kv4) return wide ? launch<64, KvDType::kKv4, 2>(p, plan, workspace, stream)
                         : launch<64, KvDType::kKv4, 1>(p, plan, workspace, stream);
    return wide ? launch<64, KvDType::kFp16, 2>(p, plan, workspace, stream)
                : launch<64, KvDType::kFp16, 1>(p, plan, workspace, stream);
  }
  return Status::error("decode attention: head_dim must be 64 or 128");
}

}  // namespace qs::kernels
