// Causal prefill attention (see prefill_attention.h) on Hopper warpgroup MMA (sm_90a), FlashAttention-3 style.
//
// Work item = 128 query rows of one (sequence, query head); persistent CTAs (one per SM) of 3 warpgroups walk the
// items longest causal block first: a producer warpgroup and two consumers of 64 query rows each. Keys are walked
// in tiles of 128 over the absolute positions [0, prefix + q_len): whole tiles of new tokens by TMA from the
// packed k/v (one producer thread), the rest by the producer's 128 threads: positions < prefix from the paged
// cache (FP16 rows by cp.async; KV4 rows dequantized in registers as (q - zero) * scale in fp32, rounded to fp16;
// FP8 rows as e4m3 * scale in fp32, rounded to fp16) and a sequence's last partial tile by cp.async (zeros past
// the keys). Shared-memory tiles are [D/64][128 rows][64 halves] with the 128-byte swizzle wgmma's descriptors
// read (16-byte chunk c of row r at c ^ (r & 7)): Q and K K-major for S = Q K^T (wgmma SS m64n128k16, fp32), V
// MN-major for O += P V (wgmma RS m64nDk16 with B transposed; P is packed to fp16 straight from the S
// accumulators, whose per-warp layout is mma.m16n8's). Causal mask (key position <= query position), online
// softmax in the log2 domain, per row. Pipeline and synchronization: see prefill_kernel.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>

#include "kernels/common/device_once.h"
#include "kernels/attention/attn_ptx.cuh"
#include "kernels/attention/prefill_attention.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"
#include "kernels/common/tensor_map.h"
#include "kernels/common/tma.h"
#include "kernels/common/wgmma.h"

namespace qs::kernels {
namespace {

using namespace attn;  // NOLINT

constexpr int kBM = 128, kBN = 128;  // query rows, key rows per tile
constexpr int kThreads = 384;        // warpgroup 0: producer; warpgroups 1, 2: consumers of 64 query rows each
constexpr int kLoaders = 128;        // the producer warpgroup's threads stage what TMA cannot
static_assert(kBM == kBN, "one swizzled tile shape for Q, K and V");

// Half offset of 16-byte chunk `chunk` of row `row` in a [D/64][128][64] tile with the 128-byte swizzle.
__device__ __forceinline__ int swz(int row, int chunk) {
  return (chunk >> 3) * (kBN * 64) + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

template <int D>
struct Smem {
  __half q[kBM * D];
  __half k[3][kBN * D];  // 3-stage ring (see prefill_kernel)
  __half v[3][kBN * D];
  uint64_t full[3];   // per stage: its tile landed (one arrival, plus the TMA bytes; one phase per tile)
  uint64_t empty[3];  // per stage: both consumer warpgroups are done with its tile (two arrivals)
  uint64_t q_full;    // Q landed (one arrival)
  uint64_t q_empty;   // both consumers issued and waited their last S of the item (two arrivals)
};

// Stages key rows [n0, n0 + 128) of K and V into buffer `buf` (the producer warpgroup's threads).
template <int D>
__device__ void load_kv_tile(const PrefillParams& p, Smem<D>& sm, int buf, int b, int kvh, int n0, int kv_len,
                             int prefix, int seq_start) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const int32_t* bt = p.block_table + int64_t(b) * p.block_table_stride;
  const KvCacheLayout& L = p.layout;
  for (int u = threadIdx.x; u < kBN * kChunks; u += kLoaders) {
    const int r = u / kChunks, c = u % kChunks;
    const int j = n0 + r;
    const uint32_t dk = smem_addr(&sm.k[buf][swz(r, c)]), dv = smem_addr(&sm.v[buf][swz(r, c)]);
    if (j >= prefix || j >= kv_len) {
      const int64_t row = (int64_t(seq_start) + (j - prefix)) * p.num_kv_heads + kvh;
      const bool ok = j < kv_len;
      cp_async16(dk, ok ? p.k + row * D + c * 8 : p.k, ok);
      cp_async16(dv, ok ? p.v + row * D + c * 8 : p.v, ok);
      continue;
    }
    const int64_t blk = L.block_offset(bt[j / L.page_size], kvh);
    const int off = j % L.page_size;
    if (L.dtype == KvDType::kFp16) {
      cp_async16(dk, p.k_pool + blk + L.data_offset(off) + c * 16, true);
      cp_async16(dv, p.v_pool + blk + L.data_offset(off) + c * 16, true);
      continue;
    }
    if (L.dtype == KvDType::kFp8) {
#pragma unroll
      for (int kv = 0; kv < 2; ++kv) {
        const uint8_t* base = (kv ? p.v_pool : p.k_pool) + blk;
        const float s = __half2float(*reinterpret_cast<const __half*>(base + L.scale_offset(off)));
        const uint2 w = *reinterpret_cast<const uint2*>(base + L.data_offset(off) + c * 8);
        uint4 o;
        uint32_t* oh = &o.x;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const uint32_t word = e < 2 ? w.x : w.y;
          const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
              __nv_fp8x2_storage_t((word >> (16 * (e & 1))) & 0xffffu), __NV_E4M3);
          oh[e] = pack_h2(__half2float(__ushort_as_half(h.x)) * s, __half2float(__ushort_as_half(h.y)) * s);
        }
        *reinterpret_cast<uint4*>(kv ? &sm.v[buf][swz(r, c)] : &sm.k[buf][swz(r, c)]) = o;
      }
      continue;
    }
#pragma unroll
    for (int kv = 0; kv < 2; ++kv) {
      const uint8_t* base = (kv ? p.v_pool : p.k_pool) + blk;
      const float s = __half2float(*reinterpret_cast<const __half*>(base + L.scale_offset(off)));
      const float z = __half2float(*reinterpret_cast<const __half*>(base + L.zero_offset(off)));
      const uint32_t w = *reinterpret_cast<const uint32_t*>(base + L.data_offset(off) + c * 4);
      uint4 o;
      uint32_t* oh = &o.x;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float lo = float((w >> (8 * e)) & 0xf), hi = float((w >> (8 * e + 4)) & 0xf);
        oh[e] = pack_h2((lo - z) * s, (hi - z) * s);
      }
      *reinterpret_cast<uint4*>(kv ? &sm.v[buf][swz(r, c)] : &sm.k[buf][swz(r, c)]) = o;
    }
  }
}

// S = Q K^T for the warpgroup's 64 rows (Q at q_addr) over the K tile at k_addr (issued and committed, not waited).
template <int D>
__device__ __forceinline__ void issue_qk(float (&s)[kBN / 2], uint32_t q_addr, uint32_t k_addr) {
  // k step kk: 64-dim block kk / 4, 32 bytes per step inside the 128-byte rows (descriptor addresses are in
  // 16-byte units and stay below 2^14 units, so offsets add to the descriptor directly).
  const uint64_t dq = wgmma_desc_k128sw(q_addr), dk = wgmma_desc_k128sw(k_addr);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    wgmma_f16_ss<kBN>(s, dq + (((kk >> 2) * (kBM * 128) + (kk & 3) * 32) >> 4),
                      dk + (((kk >> 2) * (kBN * 128) + (kk & 3) * 32) >> 4), kk > 0);
  wgmma_commit();
}

// O += P V over the V tile at v_addr (issued and committed, not waited).
template <int D>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], const uint32_t (&pa)[kBN / 16][4], uint32_t v_addr) {
  const uint64_t dv = wgmma_desc_mn128sw(v_addr, kBN * 128);  // 64-dim blocks kBN rows apart
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) wgmma_f16_rs_t<D>(o, pa[kk], dv + ((kk * 16 * 128) >> 4), 1);
  wgmma_commit();
}

// Online softmax of one S tile (keys n0..n0+127) for this thread's rows qpos0 and qpos0 + 8: masks (causal, past
// the keys) if kMask, replaces s by 2^(s sl2 - running max sl2) (one FFMA + MUFU per score; max of the raw
// scores, sl2 = scale log2 e > 0) and returns each row's correction factor for the accumulated output. The max
// and the sum run as 4 independent chains.
template <bool kMask>
__device__ __forceinline__ void softmax_tile(float (&s)[kBN / 2], float (&m)[2], float (&l)[2], float (&corr)[2],
                                             float sl2, int n0, int qpos0, int kv_len, int t) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    // Key n0 + 8 nt + 2t + e is visible iff 8 nt + e < lim (causal and inside the keys).
    const int lim = kMask ? min(qpos0 + 8 * hi + 1, kv_len) - n0 - 2 * t : kBN;
    float mx[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = s[4 * nt + 2 * hi + e];
        if (kMask && nt * 8 + e >= lim) v = -INFINITY;
        mx[nt & 3] = fmaxf(mx[nt & 3], v);
      }
    const float mnew = fmaxf(m[hi], quad_max(fmaxf(fmaxf(mx[0], mx[1]), fmaxf(mx[2], mx[3]))));
    const float base = mnew == -INFINITY ? 0.0f : mnew * sl2;  // a fully masked row so far: everything 0
    corr[hi] = ex2_ftz(m[hi] * sl2 - base);
    m[hi] = mnew;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = s[4 * nt + 2 * hi + e];
        v = ex2_ftz(fmaf(v, sl2, -base));
        sum[nt & 3] += v;
      }
    l[hi] = l[hi] * corr[hi] + ((sum[0] + sum[1]) + (sum[2] + sum[3]));
  }
}

// P as fp16 A fragments of O += P V (the S accumulators' per-warp layout is mma.m16n8's C, the A layout's halves).
__device__ __forceinline__ void pack_p(const float (&s)[kBN / 2], uint32_t (&pa)[kBN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    pa[kk][0] = pack_h2(s[8 * kk], s[8 * kk + 1]);
    pa[kk][1] = pack_h2(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = pack_h2(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = pack_h2(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// One work item = 128 query rows of one (sequence, query head): `it.m0` rows in, tiles [0, n_tiles) of keys.
// Items are numbered longest causal block first (the last query block of every sequence and head, then the one
// before, ...), the heads of one KV head adjacent; items past a sequence's new tokens are empty.
struct Item {
  int b, h, m0, seq_start, q_len, prefix, kvh, kv_len, n_tiles;
};
__device__ __forceinline__ bool item_at(const PrefillParams& p, int i, int n_mblocks, Item& it) {
  const int per_block = p.num_q_heads * p.batch;
  const int rest = i % per_block;
  it.h = rest % p.num_q_heads;
  it.b = rest / p.num_q_heads;
  it.m0 = (n_mblocks - 1 - i / per_block) * kBM;
  it.seq_start = p.cu_seqlens[it.b];
  it.q_len = p.cu_seqlens[it.b + 1] - it.seq_start;
  if (it.m0 >= it.q_len) return false;
  it.prefix = p.prefix_lens ? p.prefix_lens[it.b] : 0;
  it.kvh = it.h / (p.num_q_heads / p.num_kv_heads);
  it.kv_len = it.prefix + it.q_len;
  const int kv_end = min(it.kv_len, it.prefix + it.m0 + kBM);  // the item's last query sees keys < kv_end
  it.n_tiles = (kv_end + kBN - 1) / kBN;
  return true;
}

// Persistent CTAs (one per SM) take items blockIdx.x, + gridDim.x, ..., warp-specialized as in FlashAttention-3.
// The producer warpgroup fills a 3-stage ring of K/V tiles that runs on across items (full/empty mbarriers; whole
// tiles of new tokens by TMA from one thread, the rest staged by its 128 threads) and loads each item's Q (once
// both consumers issued their last S of the previous item; a whole Q tile by TMA too) right after the item's first
// K/V tile, and gives its registers to the consumers. Each consumer warpgroup is software-pipelined: step j waits
// for tile j, issues S(j) = Q K(j)^T and O += P(j-1) V(j-1) back to back, waits for S(j) only, computes the softmax
// of S(j) on the CUDA cores while the tensor cores run P(j-1) V(j-1), then releases tile j-1, rescales O and packs
// P(j). The pipeline runs on across items: an item's last P V is issued with the next item's S(0), and the item's
// rows are written once it is done. No CTA-wide barrier after the start; the consumers take turns issuing their
// MMAs (ping-pong) so that one's softmax runs under the other's.
template <int D>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_kernel(const PrefillParams p, const __grid_constant__ CUtensorMap q_map,
                   const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map,
                   int n_mblocks) {
  extern __shared__ unsigned char smem_raw[];
  Smem<D>& sm = *reinterpret_cast<Smem<D>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int n_items = n_mblocks * p.num_q_heads * p.batch;
  const int wg = threadIdx.x >> 7;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int st = 0; st < 3; ++st) {
      mbar_init(smem_addr(&sm.full[st]), 1);
      mbar_init(smem_addr(&sm.empty[st]), 2);
    }
    mbar_init(smem_addr(&sm.q_full), 1);
    mbar_init(smem_addr(&sm.q_empty), 2);
    fence_barrier_init();
  }
  __syncthreads();  // the barriers exist before anyone uses them; no CTA-wide barrier after this
  pdl_wait();      // launched by launch_pdl (pdl.h)

  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    // After the producer threads' cp.async / st.shared staging: their writes complete and become visible to
    // wgmma (async proxy), then one arrival on `bar`.
    auto publish = [](uint32_t bar) {
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();
      named_barrier(1, kLoaders);
      if (threadIdx.x == 0) mbar_arrive(bar);
    };
    int ring = 0, k = 0;  // ring position of the item's first tile; this CTA's item count
    // Tile jt of item `it` into ring position ring + jt, once both consumers are done with position ring + jt - 3.
    auto load_tile = [&](const Item& it, int jt) {
      const int n0 = jt * kBN, pos = ring + jt, st = pos % 3;
      const uint32_t full = smem_addr(&sm.full[st]);
      if (pos >= 3) mbar_wait(smem_addr(&sm.empty[st]), (pos / 3 - 1) & 1);
      if (n0 >= it.prefix && n0 + kBN <= it.kv_len) {  // whole tile of new tokens: TMA, 64-dim boxes of 128 rows
        if (threadIdx.x == 0) {
          mbar_arrive_expect_tx(full, 2 * kBN * D * 2);
          const int row = it.seq_start + n0 - it.prefix;
#pragma unroll
          for (int blk = 0; blk < D / 64; ++blk) {
            tma_load_3d(smem_addr(sm.k[st]) + blk * kBN * 128, &k_map, full, blk * 64, it.kvh, row);
            tma_load_3d(smem_addr(sm.v[st]) + blk * kBN * 128, &v_map, full, blk * 64, it.kvh, row);
          }
        }
      } else {  // rows from the cache or past the keys: every producer thread
        load_kv_tile<D>(p, sm, st, it.b, it.kvh, n0, it.kv_len, it.prefix, it.seq_start);
        publish(full);
      }
    };
    // The item's Q rows [m0, m0 + 128), once both consumers issued and waited their last S of item k - 1: a whole
    // tile by TMA from one thread (no wait here), a sequence's last partial tile by every thread (zeros past q_len).
    auto load_q = [&](const Item& it) {
      if (k > 0) mbar_wait(smem_addr(&sm.q_empty), (k - 1) & 1);
      const uint32_t q_full = smem_addr(&sm.q_full);
      if (it.m0 + kBM <= it.q_len) {
        if (threadIdx.x == 0) {
          mbar_arrive_expect_tx(q_full, kBM * D * 2);
#pragma unroll
          for (int blk = 0; blk < D / 64; ++blk)
            tma_load_3d(smem_addr(sm.q) + blk * kBM * 128, &q_map, q_full, blk * 64, it.h, it.seq_start + it.m0);
        }
        return;
      }
      constexpr int kChunks = D / 8;
      for (int u = threadIdx.x; u < kBM * kChunks; u += kLoaders) {
        const int r = u / kChunks, c = u % kChunks, q = it.m0 + r;
        const bool ok = q < it.q_len;
        cp_async16(smem_addr(&sm.q[swz(r, c)]),
                   ok ? p.q + ((int64_t(it.seq_start) + q) * p.num_q_heads + it.h) * D + c * 8 : p.q, ok);
      }
      publish(q_full);
    };
    // Tile 0 before Q: its slot frees before the consumers' last S of the previous item, so the first K/V tile and
    // Q of an item are in flight together (Q waits for that last S).
    for (int i = blockIdx.x; i < n_items; i += gridDim.x) {
      Item it;
      if (!item_at(p, i, n_mblocks, it)) continue;
      load_tile(it, 0);
      load_q(it);
      for (int jt = 1; jt < it.n_tiles; ++jt) load_tile(it, jt);
      ring += it.n_tiles;
      ++k;
    }
    return;
  }

  setmaxnreg_inc<232>();
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int c = wg - 1;  // consumer 0 or 1
  const uint32_t q_addr = smem_addr(sm.q) + c * 64 * 128;
  const float sl2 = p.softmax_scale * 1.4426950408889634f;
  // Ring position `pos`: wait until its tile landed; hand it back once this warpgroup's last wgmma reading it was
  // waited (both consumers release every position, in order).
  auto wait_pos = [&](int pos) { mbar_wait(smem_addr(&sm.full[pos % 3]), (pos / 3) & 1); };
  auto release_pos = [&](int pos) {
    if ((threadIdx.x & 127) == 0) mbar_arrive(smem_addr(&sm.empty[pos % 3]));
  };
  // The warpgroup's last P V of an item runs on into the next item, issued with that item's first S, and the
  // item's output is written after it: `done` describes the item whose last P V is outstanding (pending).
  struct Done {
    int seq_start, q_len, h, row0;
    int pv_pos, rest_end;  // ring position of the last P V's tile; positions (pv_pos, rest_end) only the other needs
    float l[2];
  } done{};
  bool pending = false;
  float o[D / 2];
#pragma unroll
  for (int j = 0; j < D / 2; ++j) o[j] = 0.0f;
  uint32_t pa[kBN / 16][4] = {};  // zero until the first P: the first item's S(0) round multiplies it in
  // After the outstanding P V was waited: release its tile and the later ones only the other warpgroup needs (each
  // once it landed, so that no arrival runs a phase ahead of the other warpgroup's), write the item's rows, and
  // clear O and P for the next item.
  auto finish = [&] {
    release_pos(done.pv_pos);
    for (int pos = done.pv_pos + 1; pos < done.rest_end; ++pos) {
      wait_pos(pos);
      release_pos(pos);
    }
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int q = done.row0 + warp * 16 + g + 8 * hi;
      const float lsum = quad_sum(done.l[hi]);
      if (q >= done.q_len) continue;
      const float inv = 1.0f / lsum;
      __half2* out =
          reinterpret_cast<__half2*>(p.out + ((int64_t(done.seq_start) + q) * p.num_q_heads + done.h) * D);
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        out[j * 4 + t] = __floats2half2_rn(o[4 * j + 2 * hi] * inv, o[4 * j + 2 * hi + 1] * inv);
    }
#pragma unroll
    for (int j = 0; j < D / 2; ++j) o[j] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;
    pending = false;
  };
  auto flush = [&] {  // the outstanding P V alone (no ping-pong turn: the other consumer does not count it)
    issue_pv<D>(o, pa, smem_addr(sm.v[done.pv_pos % 3]));
    wgmma_wait<0>();
    wgmma_fence_regs(o);
    finish();
  };
  int ring = 0, k = 0;
  for (int i = blockIdx.x; i < n_items; i += gridDim.x) {
    Item it;
    if (!item_at(p, i, n_mblocks, it)) continue;
    const int prefix = it.prefix, kv_len = it.kv_len, n_tiles = it.n_tiles;
    // This warpgroup's rows: queries [row0, row0 + 64); this thread's rows row0 + 16 warp + g (+ 8). It needs the
    // key tiles [0, wg_tiles) (causal) and releases all n_tiles, in order. Consumer 1's rows come later, so it
    // needs at least as many tiles as consumer 0 whenever it has rows, and a warpgroup with rows needs n_tiles or
    // n_tiles - 1 tiles (its rows' last key positions are at most 64 apart from the item's).
    auto tiles_of = [&](int r0) {
      return r0 < it.q_len ? min(n_tiles, (prefix + min(r0 + 63, it.q_len - 1)) / kBN + 1) : 0;
    };
    const int row0 = it.m0 + c * 64;
    const int wg_tiles = tiles_of(row0);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const int qpos0 = prefix + row0 + warp * 16 + g;  // absolute position of row g (row g+8: +8)

    // Softmax of S(jt): each row's correction of O into corr (applied once P(jt-1) V(jt-1) is done).
    auto softmax_step = [&](float (&s)[kBN / 2], int jt, float (&corr)[2]) {
      const int n0 = jt * kBN;
      // Masks only where needed: tiles reaching past the warpgroup's first query position or past the keys.
      if (n0 + kBN - 1 > prefix + row0 || n0 + kBN > kv_len)
        softmax_tile<true>(s, m, l, corr, sl2, n0, qpos0, kv_len, t);
      else
        softmax_tile<false>(s, m, l, corr, sl2, n0, qpos0, kv_len, t);
    };
    auto rescale_pack = [&](const float (&s)[kBN / 2], const float (&corr)[2]) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[4 * j] *= corr[0], o[4 * j + 1] *= corr[0];
        o[4 * j + 2] *= corr[1], o[4 * j + 3] *= corr[1];
      }
      pack_p(s, pa);
    };
    // Ping-pong, when both consumers have rows: they take turns to issue their MMAs of a round (named barrier
    // 2 + c is consumer c's turn, 256 threads: its own 128 syncing, the other's 128 arriving). Rounds: S(0) (with
    // the previous item's last P V when outstanding), then S(j) + P V(j-1) for j >= 1; r0 <= r1 rounds (the tile
    // counts). Consumer 1 gives consumer 0 its first turn; consumer 0 waits at every round and gives a turn after
    // it iff k < r1; consumer 1 waits iff k < r0 and gives iff k + 1 < r0. Every arrival meets exactly one wait
    // and never runs a generation ahead of it, also across items (consumer 1's last wait of an item follows
    // consumer 0's use of its last turn). A flush (an outstanding P V issued alone) takes no turn.
    const int other_rounds = tiles_of(it.m0 + (1 - c) * 64);
    const bool pingpong = it.m0 + 64 < it.q_len;  // both have rows (then both have >= 1 tile)
    int round = 0;
    auto my_turn = [&] {
      if (pingpong && (c == 0 || round < other_rounds)) named_barrier(2 + c, 256);
    };
    auto give_turn = [&] {
      if (pingpong && (c == 0 ? round < other_rounds : round + 1 < other_rounds)) named_barrier_arrive(3 - c, 256);
      ++round;
    };
    if (pingpong && c == 1) named_barrier_arrive(2, 256);
    auto q_done = [&] {  // this warpgroup's last S of the item was waited: Q may be reloaded
      if ((threadIdx.x & 127) == 0) mbar_arrive(smem_addr(&sm.q_empty));
    };
    // The branches below are warpgroup-uniform and every wgmma group is waited inside its branch.
    mbar_wait(smem_addr(&sm.q_full), k & 1);
    if (pending && wg_tiles == 0) flush();
    if (wg_tiles > 0) {
      wait_pos(ring);
      float s[kBN / 2];
      my_turn();
      issue_qk<D>(s, q_addr, smem_addr(sm.k[ring % 3]));
      // Without an outstanding P V, P is zero (O += 0): the same wgmma sequence either way (a wgmma under a
      // data-dependent branch makes ptxas serialize them all).
      issue_pv<D>(o, pa, smem_addr(sm.v[(pending ? done.pv_pos : ring) % 3]));
      give_turn();
      wgmma_wait<1>();  // S(0); the previous item's last P V still running during the softmax
      wgmma_fence_regs(s);
      float corr[2];
      softmax_step(s, 0, corr);
      wgmma_wait<0>();
      wgmma_fence_regs(o);
      if (pending) finish();
      pack_p(s, pa);  // O is zero here
    }
    for (int jt = 1; jt < wg_tiles; ++jt) {
      wait_pos(ring + jt);
      float s[kBN / 2];
      my_turn();
      issue_qk<D>(s, q_addr, smem_addr(sm.k[(ring + jt) % 3]));
      issue_pv<D>(o, pa, smem_addr(sm.v[(ring + jt - 1) % 3]));
      give_turn();
      wgmma_wait<1>();  // S(jt); P(jt-1) V(jt-1) still running during the softmax
      wgmma_fence_regs(s);
      float corr[2];
      softmax_step(s, jt, corr);
      wgmma_wait<0>();
      wgmma_fence_regs(o);
      release_pos(ring + jt - 1);
      rescale_pack(s, corr);
    }
    q_done();
    if (wg_tiles > 0) {
      // The last P V stays outstanding. The next item's first tile (position ring + n_tiles) reuses the slot of
      // position ring + n_tiles - 3, which this warpgroup has released (wg_tiles >= n_tiles - 1), so waiting for
      // it cannot deadlock.
      done = {it.seq_start, it.q_len, it.h, row0, ring + wg_tiles - 1, ring + n_tiles, {l[0], l[1]}};
      pending = true;
    } else {
      for (int pos = ring; pos < ring + n_tiles; ++pos) {  // tiles only the other warpgroup needs
        wait_pos(pos);
        release_pos(pos);
      }
    }
    ring += n_tiles;
    ++k;
  }
  if (pending) flush();
}

template <int D>
Status launch(const PrefillParams& p, cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0};  // per device (device_once.h)
  const int smem = int(sizeof(Smem<D>)) + 1024;  // + alignment of the swizzled tiles
  QS_RETURN_IF_ERROR(once_per_device(configured, [smem] {
    QS_CUDA_RETURN(cudaFuncSetAttribute(prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return Status::ok();
  }));
  // Q, K and V as [tokens][heads][D] (tokens <= batch x max_q_len; the kernel reads only whole tiles inside a
  // sequence through them), boxes of 64 dims x 1 head x 128 tokens.
  CUtensorMap maps[3];  // q, k, v
  for (int t = 0; t < 3; ++t) {
    const uint64_t heads = uint64_t(t == 0 ? p.num_q_heads : p.num_kv_heads);
    const uint64_t dims[3] = {uint64_t(D), heads, uint64_t(p.batch) * uint64_t(p.max_q_len)};
    const uint64_t strides[2] = {uint64_t(D) * 2, heads * D * 2};
    const uint32_t box[3] = {64, 1, kBN};
    const uint16_t* src = t == 0 ? p.q : t == 1 ? p.k : p.v;
    QS_RETURN_IF_ERROR(encode_tensor_map(&maps[t], CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, src, dims, strides, box,
                                         CU_TENSOR_MAP_SWIZZLE_128B, "prefill attention"));
  }
  const int n_mblocks = (p.max_q_len + kBM - 1) / kBM;
  const int64_t n_items = int64_t(n_mblocks) * p.num_q_heads * p.batch;
  if (n_items > INT32_MAX) return Status::error("prefill attention: too many query blocks x heads x sequences");
  int dev = 0, sms = 0;
  QS_CUDA_RETURN(cudaGetDevice(&dev));
  QS_CUDA_RETURN(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int grid = int(std::min<int64_t>(n_items, sms));  // persistent: one CTA per SM
  QS_CUDA_RETURN(launch_pdl(LaunchShape{dim3(unsigned(grid)), dim3(kThreads), size_t(smem), stream}, prefill_kernel<D>,
                            p, maps[0], maps[1], maps[2], n_mblocks));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace

Status run_prefill(const PrefillParams& p, cudaStream_t stream) {
  if (p.head_dim != 64 && p.head_dim != 128)
    return Status::error("prefill attention: head_dim must be 64 or 128, got " + std::to_string(p.head_dim));
  if (p.num_kv_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0)
    return Status::error("prefill attention: num_q_heads must be a multiple of num_kv_heads");
  if (p.prefix_lens) {
    const KvCacheLayout& L = p.layout;
    if (L.head_dim != p.head_dim || L.num_kv_heads != p.num_kv_heads)
      return Status::error("prefill attention: cache layout does not match the heads");
    if (L.page_size <= 0 || L.page_size % 16 != 0)
      return Status::error("prefill attention: page_size must be a positive multiple of 16");
  }
  if (!(p.softmax_scale > 0.0f) || !std::isfinite(p.softmax_scale))
    return Status::error("prefill attention: softmax_scale must be positive and finite");
  if (p.batch == 0 || p.max_q_len == 0) return Status::ok();
  return p.head_dim == 128 ? launch<128>(p, stream) : launch<64>(p, stream);
}

}  // namespace qs::kernels
