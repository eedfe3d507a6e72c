// Decode attention over the paged KV cache (see decode_attention.h).
//
// Work item = (sequence b, KV head, chunk of the context); one warp per item, 4 independent warps per CTA.
// A warp walks its chunk in tiles of 16 tokens (a tile never straddles a page) and serves all G query heads of the
// KV head's group with FP16 mma.m16n8k16, heads on the N side (8 per n-tile; NH = 2 n-tiles for G > 8):
//   S^T[tok, head] = K Q^T:     A = K (16 tokens x 16 dims, from registers), B = Q^T (16 dims x 8 heads)
//   O^T[dim, head] += V^T P^T:  A = V^T (16 dims x 16 tokens, from registers), B = P^T (movmatrix of S^T)
// The dot product over dims is order-free, so the loaders hand out K and V fragments in whatever dim order their
// bit tricks produce; Q is loaded in the matching order (k_dim) and O stored through the matching map. Tokens may
// be permuted inside a tile as long as S rows and V columns agree (Loader::row_tok; KV4 uses 2g, 2g+1).
//  K: lane (g, t) loads tile rows g and 8+g, bytes [t*D/8, (t+1)*D/8): register r = 4j+p of KV4 holds nibbles
//     (8j+p, 8j+p+4) of that slice as 1024 + n or 1024 + 16 n (one lop3, no hsub2; see Loader<D, kKv4>).
//  V: lane (g, t) loads tile columns 2t, 2t+1, 2t+8, 2t+9, bytes [g*D/16, (g+1)*D/16): one prmt gathers byte j of
//     two tokens so each half2 holds one dim of both tokens, as the A operand wants; register j = dim g*D/8 + j.
// Online softmax in the log2 domain (FA2); a lane's S columns are its O columns (heads 2t, 2t+1). Tokens past the
// chunk end are masked (scores -inf, V scale 0). The block table is read 32 pages at a time into lanes. KV4 with
// head_dim 128 stages tiles through a per-warp shared-memory ring (cp.async 16 B, 8 stages, 6 tiles = 13 KB in
// flight per warp, ~157 KB per SM at 3 CTAs/SM), reads fragments with conflict-free LDS and works on two tiles per
// step (one softmax max and rescale per 32 tokens); the other paths keep 2-3 tiles of loads in flight in register
// buffers, one tile per step. With more than one chunk, each warp writes (O/l, m + log2 l)
// to the workspace and merge_kernel (launched with programmatic dependent launch) combines the chunks. KV4 with
// head_dim 128 can also share a chunk between 2 or 4 warps of a CTA (plan.warps_per_chunk): each takes a range of
// whole steps and the group merges in shared memory (the rings, free after the main loop). O is
// rescaled only in tiles where some running maximum grew; softmax exponentials are ex2.approx.ftz. Tile addresses:
// per-lane base pointers set once, one 64-bit add per pointer and tile, page index by shift when the page size is
// a power of two; the ring's cp.async issue walks a cursor that reads the block table only on entering a page.
#include "kernels/common/device_once.h"
#include "kernels/attention/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include <cuda_fp8.h>

#include "core/error.h"
#include "kernels/attention/attn_ptx.cuh"
#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"

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

__device__ __forceinline__ float lo_f(uint32_t sz) { return __half2float(__ushort_as_half(uint16_t(sz & 0xffff))); }
__device__ __forceinline__ float hi_f(uint32_t sz) { return __half2float(__ushort_as_half(uint16_t(sz >> 16))); }

template <int D, KvDType DT>
struct Loader;

// KV4. Token permutation: mma row g holds token 2g and row g+8 token 2g+1 (V columns i the same tokens), so each
// lane reads the scales/zeros of its two tokens with one 32-bit load per array.
// K fragments are the codes as 1024 + n (even dims) or 1024 + 16 n (odd dims) straight out of one lop3 (no shift
// within a byte, no hsub2): q is pre-divided by 16 on the odd dims, and the offset 1024 * sum(q') is subtracted
// with the zero in fp32: S = s_k (acc - 1024 sum(q') - z_k sum(q)). V fragments are exact codes n (even dims) or
// 16 n (odd dims) after one hsub2 (an offset would accumulate over the whole chunk); the odd dims' factor 16 is
// divided out at the end. Scale and zero are applied in fp32 outside the mma: P is pre-multiplied by the V scale
// while the zero's share (sum_tok p s_v z_v) is accumulated per head and subtracted at the end.
template <int D>
struct Loader<D, KvDType::kKv4> {
  static constexpr bool kCodes = true;
  static constexpr bool kScaled = true;  // per-token K scale applied to S, V scale to P (outside the mma)
  static constexpr float kVScale = 1.0f;  // P carries V scale x kVScale (divided out at the end)
  static constexpr int kKWords = D / 32;  // D/8 bytes of a K row per lane
  static constexpr int kVWords = D / 64;  // D/16 bytes of a V row per lane
  struct Raw {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
    uint32_t ks, kz, vs, vz;  // FP16 scales / zeros of tokens 2g (low half) and 2g+1 (high half)
  };
  // Token (within the tile) of mma row nt*8 + g, and of V column 2t + (q&1) + 8(q>>1).
  __device__ static int row_tok(int nt, int g) { return 2 * g + nt; }
  __device__ static int col_tok(int q, int t) { return 4 * t + 2 * (q & 1) + (q >> 1); }
  // Physical dims of K register r (low, high half) for lane column t.
  __device__ static int2 k_dim(int t, int r) {
    const int base = t * (D / 4) + 8 * (r / 4) + (r % 4);
    return make_int2(base, base + 4);
  }
  // Per-lane pointers into the pools for (page 0, this KV head, tile offset 0), set once per warp; a tile load
  // adds the page's offset and the tile offset (one 64-bit add per pointer) and reads the rest as immediates.
  struct Ptrs {
    const uint8_t *k, *v, *ks, *vs;
  };
  __device__ static Ptrs ptrs(const DecodeParams& p, int kvh, int g, int t) {
    const KvCacheLayout& L = p.layout;
    const int64_t head = int64_t(kvh) * L.block_bytes();
    const int64_t sc = head + L.scale_offset(2 * g);
    return {p.k_pool + head + L.data_offset(row_tok(0, g)) + t * (D / 8),
            p.v_pool + head + L.data_offset(col_tok(0, t)) + g * (D / 16), p.k_pool + sc, p.v_pool + sc};
  }
  // Tile at token `off` of the page at byte offset `page_off` of the pools; `valid` tokens of it are in the chunk.
  __device__ static void load(Raw& r, const Ptrs& P, int64_t page_off, int off, int page_size, int valid, int g,
                              int t) {
    const int64_t d = page_off + off * (D / 2), sc = page_off + 2 * off;
    const uint8_t* kp = P.k + d;
    const uint8_t* vp = P.v + d;
    load_words(kp, r.k[0]);
    load_words(kp + D / 2, r.k[1]);  // row_tok(1, g) = row_tok(0, g) + 1
    const uint8_t* ksp = P.ks + sc;
    const uint8_t* vsp = P.vs + sc;
    r.ks = __ldg(reinterpret_cast<const uint32_t*>(ksp));
    r.kz = __ldg(reinterpret_cast<const uint32_t*>(ksp + 2 * page_size));  // zeros follow the scales
    const uint32_t vs = __ldg(reinterpret_cast<const uint32_t*>(vsp));
    const uint32_t vz = __ldg(reinterpret_cast<const uint32_t*>(vsp + 2 * page_size));
    // Masked tokens (unwritten slots may hold inf/NaN): V scale and zero 0.
    const uint32_t keep = 2 * g + 1 < valid ? 0xffffffffu : (2 * g < valid ? 0x0000ffffu : 0u);
    r.vs = vs & keep;
    r.vz = vz & keep;
#pragma unroll
    for (int q = 0; q < 4; ++q) load_words(vp + (col_tok(q, t) - col_tok(0, t)) * (D / 2), r.v[q]);
  }
  // Shared-memory staging of one 16-token tile (D = 128 only): K data 1024 B, V data 1024 B, then 32 B each of
  // K scales, K zeros, V scales, V zeros. The 16-byte chunk (row r, column c) of K/V data sits in 128-byte line r/2
  // at chunk ((r&1)*4 + c) ^ swz(r): conflict-free LDS.128 of K rows (2g, 2g+1 for 8 lanes) and LDS.64 of V rows
  // (4t + const for 16 lanes).
  __host__ __device__ static constexpr int tile_bytes() { return 2 * 16 * (D / 2) + 4 * 32; }
  __device__ static int swz(int r, int c) {
    return (r >> 1) * 128 + ((((r & 1) * 4 + c) ^ (((r >> 2) & 3) << 1) ^ (((r >> 1) & 1) << 2)) * 16);
  }
  // A lane's source pointers for the tile at token `off` of blocks kb / vb (K / V block of the page and KV head):
  // data chunks `lane` and `lane` + 32 (+512 B) of K and V, and for lanes 0..7 one 16-byte chunk of the K or V
  // scales / zeros. advance() moves them to the next tile of the page.
  struct Cursor {
    const uint8_t *k, *v, *s;
    __device__ void advance() { k += 16 * (D / 2), v += 16 * (D / 2), s += 32; }
  };
  __device__ static Cursor cursor(const uint8_t* kb, const uint8_t* vb, int off, int page_size, int lane) {
    const int64_t d = int64_t(off) * (D / 2) + 16 * lane;
    const int sl = lane & 7;  // lanes 0..7: K scales, K zeros, V scales, V zeros, 32 B (two chunks) each
    const int64_t o = int64_t(page_size) * (D / 2) + ((sl >> 1) & 1) * 2 * page_size + 2 * off + 16 * (sl & 1);
    return {kb + d, vb + d, (sl < 4 ? kb : vb) + o};
  }
  // Issues the cp.async copies of the cursor's tile into stage `st` (predicated on `live`: no branch).
  __device__ static void issue(uint32_t st, const Cursor& c, int lane, bool live) {
    static_assert(D == 128, "shared-memory staging is laid out for head_dim 128");
    const uint32_t d0 = swz(lane >> 2, lane & 3), d1 = swz((lane >> 2) + 8, lane & 3);
    cp_async16_if(st + d0, c.k, live);
    cp_async16_if(st + d1, c.k + 512, live);
    cp_async16_if(st + 1024 + d0, c.v, live);
    cp_async16_if(st + 1024 + d1, c.v + 512, live);
    cp_async16_if(st + 2048 + 16 * lane, c.s, live && lane < 8);
  }
  // Reads this lane's fragments of a staged tile (same registers as load()).
  __device__ static void load_smem(Raw& r, const uint8_t* st, int valid, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const uint4 v = *reinterpret_cast<const uint4*>(st + swz(2 * g + nt, t));
      r.k[nt][0] = v.x, r.k[nt][1] = v.y, r.k[nt][2] = v.z, r.k[nt][3] = v.w;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint2 v = *reinterpret_cast<const uint2*>(st + 1024 + swz(col_tok(q, t), g >> 1) + 8 * (g & 1));
      r.v[q][0] = v.x, r.v[q][1] = v.y;
    }
    const uint32_t* sc = reinterpret_cast<const uint32_t*>(st + 2048) + g;
    r.ks = sc[0];
    r.kz = sc[8];
    const uint32_t keep = 2 * g + 1 < valid ? 0xffffffffu : (2 * g < valid ? 0x0000ffffu : 0u);
    r.vs = sc[16] & keep;
    r.vz = sc[24] & keep;
  }
  static constexpr int kVGroup = 8;  // V dims produced per loaded word
  // K register reg: nibbles (p, p+4), p = reg % 4, of word reg / 4 as 1024 + n (p even) or 1024 + 16 n (p odd).
  __device__ static uint32_t k_reg(const Raw& r, int nt, int reg) {
    const uint32_t w = r.k[nt][reg / 4], p = reg % 4;
    return lop3_and_or(p >= 2 ? w >> 8 : w, p & 1 ? 0x00f000f0u : 0x000f000fu, 0x64006400u);
  }
  // V fragments (exact codes; odd dims x16) of dims kVGroup*w .. +kVGroup-1 for token pair pr (columns 2t+8pr,
  // 2t+8pr+1): one prmt brings byte j of both tokens to bytes 0 and 2, two lop3 + hsub2 take its two nibbles.
  __device__ static void v_group(const Raw& r, int pr, int w, uint32_t (&out)[kVGroup]) {
    const uint32_t a = r.v[2 * pr][w], b = r.v[2 * pr + 1][w];
    const __half2 magic = bits_h2(0x64006400u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t x = prmt(a, b, uint32_t(((4 + j) << 8) | j));
      out[2 * j] = h2_bits(__hsub2(bits_h2(lop3_and_or(x, 0x000f000fu, 0x64006400u)), magic));
      out[2 * j + 1] = h2_bits(__hsub2(bits_h2(lop3_and_or(x, 0x00f000f0u, 0x64006400u)), magic));
    }
  }
};

template <int D>
struct Loader<D, KvDType::kFp16> {
  static constexpr bool kCodes = false;
  static constexpr bool kScaled = false;
  static constexpr float kVScale = 1.0f;
  static constexpr int kKWords = D / 8;   // D/4 halves of a K row per lane
  static constexpr int kVWords = D / 16;  // D/8 halves of a V row per lane
  struct Raw {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
  };
  __device__ static int row_tok(int nt, int g) { return nt * 8 + g; }
  __device__ static int2 k_dim(int t, int r) { return make_int2(t * (D / 4) + 2 * r, t * (D / 4) + 2 * r + 1); }
  struct Ptrs {
    const uint8_t *k, *v;
  };
  __device__ static Ptrs ptrs(const DecodeParams& p, int kvh, int, int) {
    const int64_t head = int64_t(kvh) * p.layout.block_bytes();
    return {p.k_pool + head, p.v_pool + head};
  }
  __device__ static void load(Raw& r, const Ptrs& P, int64_t page_off, int off, int, int valid, int g, int t) {
    const uint8_t* kblk = P.k + page_off;
    const uint8_t* vblk = P.v + page_off;
    constexpr int kRow = D * 2;  // bytes of an FP16 row
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) load_words(kblk + (off + nt * 8 + g) * kRow + t * (D / 2), r.k[nt]);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int i = 2 * t + (q & 1) + 8 * (q >> 1);
      load_words(vblk + (off + i) * kRow + g * (D / 4), r.v[q]);
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

// FP8 e4m3 with an FP16 scale per token (no zero). Same token permutation as KV4 (rows 2g, 2g+1; one 32-bit load
// of each scale array per lane) and the same scale handling (K scale on S, V scale folded into P); the data is
// converted to FP16 with cvt.rn.f16x2.e4m3x2 (exact) and fed to the same mma. K: lane (g, t) reads bytes
// [t*D/4, (t+1)*D/4) of rows 2g, 2g+1 (register r = dims t*D/4 + 2r, +1, as FP16). V: lane (g, t) reads bytes
// [g*D/8, (g+1)*D/8) of tokens col_tok(q, t); one prmt pairs byte j of two tokens, one cvt makes the half2
// (register j = dim g*D/8 + j, as FP16). Masked tokens get V data 0 (unwritten slots may hold e4m3 NaN).
template <int D>
struct Loader<D, KvDType::kFp8> {
  static constexpr bool kCodes = false;
  static constexpr bool kScaled = true;
  // FP8 V scales are amax / 448, so P * scale would often fall into FP16's subnormals (spacing 2^-24): P carries
  // scale * 256 instead (at most 0.58 amax < 65504: no overflow) and the output is divided by 256 (exact).
  static constexpr float kVScale = 256.0f;
  static constexpr int kKWords = D / 16;  // D/4 bytes of a K row per lane
  static constexpr int kVWords = D / 32;  // D/8 bytes of a V row per lane
  struct Raw {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
    uint32_t ks, vs, kz, vz;  // FP16 scales of tokens 2g (low half), 2g+1 (high half); kz = vz = 0 (no zeros)
  };
  __device__ static int row_tok(int nt, int g) { return 2 * g + nt; }
  __device__ static int col_tok(int q, int t) { return 4 * t + 2 * (q & 1) + (q >> 1); }
  __device__ static int2 k_dim(int t, int r) { return make_int2(t * (D / 4) + 2 * r, t * (D / 4) + 2 * r + 1); }
  struct Ptrs {
    const uint8_t *k, *v, *ks, *vs;
  };
  __device__ static Ptrs ptrs(const DecodeParams& p, int kvh, int g, int t) {
    const KvCacheLayout& L = p.layout;
    const int64_t head = int64_t(kvh) * L.block_bytes();
    const int64_t sc = head + L.scale_offset(2 * g);
    return {p.k_pool + head + L.data_offset(row_tok(0, g)) + t * (D / 4),
            p.v_pool + head + L.data_offset(col_tok(0, t)) + g * (D / 8), p.k_pool + sc, p.v_pool + sc};
  }
  __device__ static void load(Raw& r, const Ptrs& P, int64_t page_off, int off, int, int valid, int g, int t) {
    const int64_t d = page_off + int64_t(off) * D, sc = page_off + 2 * off;
    const uint8_t* kp = P.k + d;
    const uint8_t* vp = P.v + d;
    load_words(kp, r.k[0]);
    load_words(kp + D, r.k[1]);  // row_tok(1, g) = row_tok(0, g) + 1
    r.ks = __ldg(reinterpret_cast<const uint32_t*>(P.ks + sc));
    const uint32_t keep = 2 * g + 1 < valid ? 0xffffffffu : (2 * g < valid ? 0x0000ffffu : 0u);
    r.vs = __ldg(reinterpret_cast<const uint32_t*>(P.vs + sc)) & keep;
    r.kz = r.vz = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      load_words(vp + (col_tok(q, t) - col_tok(0, t)) * D, r.v[q]);
      if (col_tok(q, t) >= valid)
#pragma unroll
        for (int w = 0; w < kVWords; ++w) r.v[q][w] = 0;
    }
  }
  __device__ static uint32_t cvt2(uint32_t two_bytes) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(two_bytes & 0xffffu), __NV_E4M3);
    return uint32_t(h.x) | (uint32_t(h.y) << 16);
  }
  static constexpr int kVGroup = 4;
  __device__ static uint32_t k_reg(const Raw& r, int nt, int reg) {
    const uint32_t w = r.k[nt][reg / 2];
    return cvt2(reg & 1 ? w >> 16 : w);
  }
  __device__ static void v_group(const Raw& r, int pr, int w, uint32_t (&out)[kVGroup]) {
    const uint32_t a = r.v[2 * pr][w], b = r.v[2 * pr + 1][w];
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = cvt2(prmt(a, b, uint32_t(((4 + j) << 4) | j)));
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
  uint32_t qb[NH][D / 16][2];  // KV4: q / 16 on the odd dims (see Loader<D, kKv4>)
  float o[NH][D / 16][4];
  float m[NH][2], l[NH][2];
  float sumq[NH][2];  // KV4: sum of the (fp16) query of heads 2t, 2t+1
  float qoff[NH][2];  // KV4: 1024 * sum of the (pre-divided) query of heads 2t, 2t+1: the K fragments' offset
  float zc[NH][2];    // KV4: sum_tok p_tok * s_v * z_v of heads 2t, 2t+1 (this lane's tokens), to subtract

  // One step over T consecutive tiles (tokens tok0 .. tok0 + 16T - 1; tiles past `end` are fully masked): the
  // tiles' mma chains are independent, and the softmax's max (three shuffles per head column), rescale and
  // O correction are paid once per step instead of once per tile. T = 2 halves the dependent latency per token of a
  // warp, which bounds a warp's throughput at short contexts.
  template <int T>
  __device__ void step(const typename L::Raw* raw, int tok0, int end, float sl2, int g) {
    // Two independent mma chains per tile over the dims (even / odd k-steps).
    float s[T][NH][4], s2[T][NH][4];
#pragma unroll
    for (int u = 0; u < T; ++u)
#pragma unroll
      for (int nh = 0; nh < NH; ++nh)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[u][nh][i] = s2[u][nh][i] = 0.0f;
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
      for (int u = 0; u < T; ++u) {
        const uint32_t a[4] = {L::k_reg(raw[u], 0, 2 * c), L::k_reg(raw[u], 1, 2 * c), L::k_reg(raw[u], 0, 2 * c + 1),
                               L::k_reg(raw[u], 1, 2 * c + 1)};
#pragma unroll
        for (int nh = 0; nh < NH; ++nh) mma_f16_16816(c % 2 ? s2[u][nh] : s[u][nh], a, qb[nh][c][0], qb[nh][c][1]);
      }
    float vs[T][2], vz[T][2];
#pragma unroll
    for (int u = 0; u < T; ++u) {
#pragma unroll
      for (int nh = 0; nh < NH; ++nh)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[u][nh][i] += s2[u][nh][i];
      vs[u][0] = vs[u][1] = 1.0f;
      vz[u][0] = vz[u][1] = 0.0f;
      if constexpr (L::kScaled) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {  // tokens 2g (nt 0), 2g+1 (nt 1): S log2 = sl2 s_k (acc - qoff - z_k sum(q))
          const float ksl = (nt ? hi_f(raw[u].ks) : lo_f(raw[u].ks)) * sl2;
          const float kz = nt ? hi_f(raw[u].kz) : lo_f(raw[u].kz);
#pragma unroll
          for (int nh = 0; nh < NH; ++nh)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              s[u][nh][2 * nt + e] = L::kCodes ? (s[u][nh][2 * nt + e] - fmaf(kz, sumq[nh][e], qoff[nh][e])) * ksl
                                               : s[u][nh][2 * nt + e] * ksl;
          vs[u][nt] = (nt ? hi_f(raw[u].vs) : lo_f(raw[u].vs)) * L::kVScale;
          vz[u][nt] = nt ? hi_f(raw[u].vz) : lo_f(raw[u].vz);
        }
      } else {
#pragma unroll
        for (int nh = 0; nh < NH; ++nh)
#pragma unroll
          for (int i = 0; i < 4; ++i) s[u][nh][i] *= sl2;
      }
    }
    bool ok[T][2];
#pragma unroll
    for (int u = 0; u < T; ++u)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) ok[u][nt] = tok0 + 16 * u + L::row_tok(nt, g) < end;
    uint32_t pb[T][NH][2];
    float corr[NH][2];
    bool grew = false;
#pragma unroll
    for (int nh = 0; nh < NH; ++nh) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {  // head column 2t + e: mma rows g (s[e]) and g + 8 (s[2 + e]) of every tile
        float v[T][2];
        float mx = -INFINITY;
#pragma unroll
        for (int u = 0; u < T; ++u) {
          v[u][0] = ok[u][0] ? s[u][nh][e] : -INFINITY;
          v[u][1] = ok[u][1] ? s[u][nh][2 + e] : -INFINITY;
          mx = fmaxf(mx, fmaxf(v[u][0], v[u][1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float mnew = fmaxf(m[nh][e], mx);
        grew |= mnew > m[nh][e];
        const float c = ex2_ftz(m[nh][e] - mnew);
        corr[nh][e] = c;
        m[nh][e] = mnew;
        float lsum = l[nh][e] * c, zsum = zc[nh][e] * c;
#pragma unroll
        for (int u = 0; u < T; ++u) {
          const float p0 = ex2_ftz(v[u][0] - mnew), p1 = ex2_ftz(v[u][1] - mnew);
          lsum += p0 + p1;
          s[u][nh][e] = p0 * vs[u][0];  // P pre-scaled by the V scale of its token (1 for FP16)
          s[u][nh][2 + e] = p1 * vs[u][1];
          if constexpr (L::kCodes) zsum += s[u][nh][e] * vz[u][0] + s[u][nh][2 + e] * vz[u][1];
        }
        l[nh][e] = lsum;
        zc[nh][e] = zsum;
      }
#pragma unroll
      for (int u = 0; u < T; ++u) {
        pb[u][nh][0] = movmatrix_trans(pack_h2(s[u][nh][0], s[u][nh][1]));  // rows 0..7 x heads -> B rows 0..7
        pb[u][nh][1] = movmatrix_trans(pack_h2(s[u][nh][2], s[u][nh][3]));  // rows 8..15
      }
    }
    // The running maxima rarely grow after the first tiles: rescale O only when one did (warp-uniform branch).
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int nh = 0; nh < NH; ++nh)
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt)
#pragma unroll
          for (int e = 0; e < 2; ++e) o[nh][mt][e] *= corr[nh][e], o[nh][mt][2 + e] *= corr[nh][e];
    }
    constexpr int VG = L::kVGroup;
#pragma unroll
    for (int u = 0; u < T; ++u)
#pragma unroll
      for (int w = 0; w < D / 8 / VG; ++w) {
        uint32_t v0[VG], v1[VG];
        L::v_group(raw[u], 0, w, v0);
        L::v_group(raw[u], 1, w, v1);
#pragma unroll
        for (int i = 0; i < VG / 2; ++i) {
          const uint32_t a[4] = {v0[2 * i], v0[2 * i + 1], v1[2 * i], v1[2 * i + 1]};
#pragma unroll
          for (int nh = 0; nh < NH; ++nh) mma_f16_16816(o[nh][w * VG / 2 + i], a, pb[u][nh][0], pb[u][nh][1]);
        }
      }
  }
};

// Register budget: KV4 keeps 3 CTAs (12 warps) per SM resident with 3 tiles of loads in flight per warp; FP16
// tiles are 4x larger, so 2 in flight.
template <KvDType DT, int NH>
constexpr int kMinCtas = DT == KvDType::kKv4 && NH == 1 ? 3 : 2;
template <KvDType DT>
constexpr int kBufs = DT == KvDType::kFp16 ? 2 : 3;  // FP8 tiles are half the FP16 size

// S > 0 (KV4, D = 128): tiles staged through a per-warp shared-memory ring of S tiles (S - 1 in flight) with
// cp.async instead of register buffers; MinCtas CTAs per SM.
// W > 1 (S > 0 only): the W warps of a group (consecutive warps of the CTA) split one chunk into W ranges of whole
// steps and merge their partial results in shared memory (the ring, free after the main loop) before the output
// write: more warps on short work without the workspace and the merge kernel of a global split.
template <int D, KvDType DT, int NH, int S, int MinCtas, int W = 1>
__global__ void __launch_bounds__(kWarpsPerCta * 32, MinCtas)
    decode_kernel(const DecodeParams p, const int32_t chunk_tokens, const int32_t max_chunks, float* __restrict__ ws_o,
                  float* __restrict__ ws_m) {
  static_assert(W == 1 || (S > 0 && kWarpsPerCta % W == 0), "chunks split across warps need the shared-memory ring");
  pdl_wait();  // launched by launch_pdl (pdl.h)
  using L = Loader<D, DT>;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warp = int(threadIdx.x >> 5), sub = warp % W;
  const KvCacheLayout& Lay = p.layout;
  const int hkv = Lay.num_kv_heads;
  const int64_t item = int64_t(blockIdx.x) * (kWarpsPerCta / W) + warp / W;
  const int chunk = int(item % max_chunks);
  const int64_t bh = item / max_chunks;
  if (bh >= int64_t(p.batch) * hkv) return;  // uniform over a group: no warp waits at its barrier
  const int b = int(bh / hkv), kvh = int(bh % hkv);
  const int ctx = p.context_lens[b];
  if (chunk * chunk_tokens >= ctx) return;  // uniform over a group
  // This warp's tokens [start, end): the chunk, or for W > 1 its sub-th range of `per` tiles (a whole number of
  // two-tile steps; the last ranges may be short or empty).
  int start = chunk * chunk_tokens, end = min(ctx, start + chunk_tokens);
  if constexpr (W > 1) {
    const int per = (((end - start + 15) / 16 + W - 1) / W + 1) & ~1;
    start = min(end, start + 16 * per * sub);
    end = min(end, start + 16 * per);
  }
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
        if (L::kCodes && rr == 1) v = h2_bits(__hmul2(bits_h2(v), __float2half2_rn(0.0625f)));  // exact: 2^-4
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
    // KV4 offset: 1024 * sum(q') over the pre-divided query.
    float part = 0.0f, part_off = 0.0f;
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float2 f = __half22float2(bits_h2(w.qb[nh][c][rr]));
        part_off += f.x + f.y;
        part += (L::kCodes && rr == 1 ? 16.0f : 1.0f) * (f.x + f.y);
      }
#pragma unroll
    for (int x = 1; x < 4; x <<= 1) {
      part += __shfl_xor_sync(0xffffffffu, part, x);
      part_off += __shfl_xor_sync(0xffffffffu, part_off, x);
    }
    w.sumq[nh][0] = __shfl_sync(0xffffffffu, part, (2 * t) * 4);
    w.sumq[nh][1] = __shfl_sync(0xffffffffu, part, (2 * t + 1) * 4);
    w.qoff[nh][0] = 1024.0f * __shfl_sync(0xffffffffu, part_off, (2 * t) * 4);
    w.qoff[nh][1] = 1024.0f * __shfl_sync(0xffffffffu, part_off, (2 * t + 1) * 4);
  }
  const float sl2 = p.softmax_scale * 1.4426950408889634f;

  PageIds pages{p.block_table + int64_t(b) * p.block_table_stride, start / Lay.page_size,
                (end + Lay.page_size - 1) / Lay.page_size, 0};
  pages.fill(lane);
  const int page_bytes = int(Lay.page_bytes());  // < 2^31 (run_decode checks)
  // Page sizes are powers of two in practice: shift and mask instead of an integer division per tile.
  const int psize = Lay.page_size, pshift = __popc(psize) == 1 ? __ffs(psize) - 1 : -1;
  if constexpr (S == 0) {
    const typename L::Ptrs ptrs = L::ptrs(p, kvh, g, t);
    auto load = [&](typename L::Raw& r, int tok0) {
      const int pidx = pshift >= 0 ? tok0 >> pshift : tok0 / psize;
      const int64_t page_off = int64_t(pages.get(pidx, lane)) * page_bytes;
      L::load(r, ptrs, page_off, tok0 - pidx * psize, psize, end - tok0, g, t);
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
          w.template step<1>(&r[i], tk, end, sl2, g);
          if (tk + 16 * kB < end) load(r[i], tk + 16 * kB);
        }
      }
    }
  } else {
    extern __shared__ uint4 smem_ring[];
    const uint8_t* ring = reinterpret_cast<const uint8_t*>(smem_ring) + (threadIdx.x >> 5) * (S * L::tile_bytes());
    const uint32_t ring_s = smem_addr(ring);
    const int64_t head = int64_t(kvh) * Lay.block_bytes();
    // Tiles are issued in order: a cursor (page index, token offset in the page, the lane's source pointers) moves
    // 16 tokens per tile and reads the block table only when it enters a new page (a tile never straddles a page).
    // Past the chunk the copies are predicated off (the cursor may point at page 0: never read).
    int cur_page = pshift >= 0 ? start >> pshift : start / psize;
    int cur_off = start - cur_page * psize;
    typename L::Cursor cur;
    auto seek = [&] {
      const int64_t blk = int64_t(pages.get(cur_page, lane)) * page_bytes + head;
      cur = L::cursor(p.k_pool + blk, p.v_pool + blk, cur_off, psize, lane);
    };
    seek();
    auto issue = [&](int stage, bool live) {
      L::issue(ring_s + stage * L::tile_bytes(), cur, lane, live);
      cur.advance();
      cur_off += 16;
      if (cur_off == psize) {
        cur_off = 0;
        ++cur_page;
        seek();
      }
    };
    // Two tiles per step (DecodeWarp::step<2>). The ring holds S tiles: S - 2 are issued ahead, and a step's two new
    // tiles go to the stages the previous step read (never to the ones this step reads). Every issue slot commits
    // one cp.async group (empty past the chunk) so the group count is fixed.
    constexpr int P = 2;
    static_assert(S % P == 0 && S >= 2 * P, "ring of whole steps");
    const int ntiles = (end - start + 15) / 16;
#pragma unroll
    for (int i = 0; i < S - P; ++i) {
      issue(i, i < ntiles);
      cp_async_commit();
    }
    int rd = 0;  // stage of tile i
    for (int i = 0; i < ntiles; i += P) {
      cp_async_wait<S - 2 * P>();
      __syncwarp();  // every lane's copies of tiles i, i+1 landed; every lane is done reading the previous step's
      const int tk = start + 16 * i;
      typename L::Raw raw[P];
#pragma unroll
      for (int u = 0; u < P; ++u) L::load_smem(raw[u], ring + (rd + u) * L::tile_bytes(), end - tk - 16 * u, g, t);
      const int wr = rd == 0 ? S - P : rd - P;  // the previous step's stages
#pragma unroll
      for (int u = 0; u < P; ++u) {
        issue(wr + u, i + S - P + u < ntiles);
        cp_async_commit();
      }
      rd = rd + P == S ? 0 : rd + P;
      w.template step<P>(raw, tk, end, sl2, g);
    }
  }

  pdl_launch_dependents();  // after the main loop (pdl.h): the merge kernel, if any, may start launching
  // Normalize: O <- (O - zero share) / l per head column (odd KV4 dims without their factor 16), lse = m + log2 l
  // (an empty range: O = 0, lse = -inf).
  float lse[NH][2];
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
      constexpr float kOdd = L::kCodes ? 0.0625f : 1.0f;  // KV4 V codes of odd dims carry a factor 16
      const float inv = lsum > 0.0f ? (1.0f / L::kVScale) / lsum : 0.0f;
#pragma unroll
      for (int mt = 0; mt < D / 16; ++mt) {
        w.o[nh][mt][e] = (w.o[nh][mt][e] - zsum) * inv;
        w.o[nh][mt][2 + e] = (w.o[nh][mt][2 + e] * kOdd - zsum) * inv;
      }
      lse[nh][e] = lsum > 0.0f ? w.m[nh][e] + log2f(lsum) : -INFINITY;
    }
  if constexpr (W > 1) {
    // Every warp of the group stores its (O, lse) in its ring, lane-major (a lane's values are the same head
    // columns and dims in every warp); warp sub 0 weighs them by 2^(lse - max) and writes the group's result.
    constexpr int kVals = NH * (D / 16) * 4, kRingFloats = S * L::tile_bytes() / 4;
    static_assert((kVals + 2 * NH) * 32 <= kRingFloats, "merge staging exceeds the ring");
    extern __shared__ uint4 smem_ring[];
    float* mine = reinterpret_cast<float*>(smem_ring) + warp * kRingFloats;
    // Value idx of warp sub + j: O (nh, mt, i) at (nh * D/16 + mt) * 4 + i, lse (nh, e) at kVals + 2 nh + e.
    auto slot = [&](int j, int idx) -> float& { return mine[j * kRingFloats + idx * 32 + lane]; };
    cp_async_wait<0>();
    __syncwarp();  // every lane is done reading the ring
    if (sub > 0) {
#pragma unroll
      for (int nh = 0; nh < NH; ++nh) {
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) slot(0, (nh * (D / 16) + mt) * 4 + i) = w.o[nh][mt][i];
        slot(0, kVals + 2 * nh) = lse[nh][0];
        slot(0, kVals + 2 * nh + 1) = lse[nh][1];
      }
    }
    // Named barrier 1 + group over the group's 32 W threads; constant ids (a register id reserves all 16).
    if (W == 4 || warp < 2)
      asm volatile("bar.sync 1, %0;\n" ::"n"(32 * W) : "memory");
    else
      asm volatile("bar.sync 2, %0;\n" ::"n"(32 * W) : "memory");
    if (sub > 0) return;
#pragma unroll
    for (int nh = 0; nh < NH; ++nh)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float mx = lse[nh][e];  // the max is finite: warp 0's range is never empty
#pragma unroll
        for (int j = 1; j < W; ++j) mx = fmaxf(mx, slot(j, kVals + 2 * nh + e));
        float a[W], asum = 0.0f;
#pragma unroll
        for (int j = 0; j < W; ++j) {
          const float l_j = j ? slot(j, kVals + 2 * nh + e) : lse[nh][e];
          a[j] = exp2f(l_j - mx);
          asum += a[j];
        }
        const float inv = 1.0f / asum;
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = 2 * h + e;
            float acc = a[0] * w.o[nh][mt][i];
#pragma unroll
            for (int j = 1; j < W; ++j)
              acc += a[j] * slot(j, (nh * (D / 16) + mt) * 4 + i);
            w.o[nh][mt][i] = acc * inv;
          }
        lse[nh][e] = mx + log2f(asum);
      }
  }
#pragma unroll
  for (int nh = 0; nh < NH; ++nh)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int head = nh * 8 + 2 * t + e;
      if (head >= group) continue;
      if (max_chunks == 1) {
        __half2* out = reinterpret_cast<__half2*>(p.out + (head0 + head) * D + (D / 8) * g);
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) out[mt] = __floats2half2_rn(w.o[nh][mt][e], w.o[nh][mt][2 + e]);
      } else {
        const int64_t row = (head0 + head) * max_chunks + chunk;
        float2* out = reinterpret_cast<float2*>(ws_o + row * D + (D / 8) * g);
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) out[mt] = make_float2(w.o[nh][mt][e], w.o[nh][mt][2 + e]);
        if (g == 0) ws_m[row] = lse[nh][e];
      }
    }
}

// One CTA of D threads per (sequence, query head): weighted sum of the chunks' normalized partial outputs.
template <int D>
__global__ void __launch_bounds__(D) merge_kernel(const DecodeParams p, const int32_t chunk_tokens,
                                                  const int32_t max_chunks, const float* __restrict__ ws_o,
                                                  const float* __restrict__ ws_m) {
  pdl_wait();  // launched early (PDL): wait for decode_kernel's writes
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

// Warps per chunk the kernels implement: 1, or 2 / 4 for the KV4 head_dim 128 ring kernel.
bool warps_per_chunk_ok(const KvCacheLayout& l, int warps) {
  return warps == 1 || ((warps == 2 || warps == 4) && l.dtype == KvDType::kKv4 && l.head_dim == 128);
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

template <int D, KvDType DT, int NH, int S = 0, int MinCtas = kMinCtas<DT, NH>, int W = 1>
Status launch(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream) {
  float* ws_o = static_cast<float*>(workspace);
  float* ws_m = ws_o + int64_t(p.batch) * p.num_q_heads * plan.max_chunks * D;
  const int64_t items = int64_t(p.batch) * p.layout.num_kv_heads * plan.max_chunks;
  constexpr int kItemsPerCta = kWarpsPerCta / W;
  const int64_t ctas = (items + kItemsPerCta - 1) / kItemsPerCta;
  int smem = 0;
  if constexpr (S > 0) {
    smem = kWarpsPerCta * S * Loader<D, DT>::tile_bytes();
    static std::atomic<uint64_t> raised{0};  // once per instantiation and device (device_once.h)
    QS_RETURN_IF_ERROR(once_per_device(raised, [smem] {
      QS_CUDA_RETURN(cudaFuncSetAttribute(decode_kernel<D, DT, NH, S, MinCtas, W>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      return Status::ok();
    }));
  }
  QS_CUDA_RETURN(launch_pdl(LaunchShape{dim3(unsigned(ctas)), dim3(kWarpsPerCta * 32), size_t(smem), stream},
                            decode_kernel<D, DT, NH, S, MinCtas, W>, p, plan.chunk_tokens, plan.max_chunks, ws_o,
                            ws_m));
  QS_CUDA_RETURN(cudaGetLastError());
  if (plan.max_chunks > 1) {
    // Programmatic dependent launch (pdl.h), always (one operation): the merge grid is launched while the decode
    // grid drains and waits in pdl_wait, which hides one launch latency (small batches are latency-bound).
    LaunchShape merge{dim3(unsigned(int64_t(p.batch) * p.num_q_heads)), dim3(D), 0, stream};
    merge.always_pdl = true;
    QS_CUDA_RETURN(launch_pdl(merge, merge_kernel<D>, p, plan.chunk_tokens, plan.max_chunks,
                              static_cast<const float*>(ws_o), static_cast<const float*>(ws_m)));
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
  const int sms = std::max(num_sms, 1);
  int64_t chunks = 1;
  int32_t warps = 1;
  if (layout.dtype != KvDType::kKv4 || layout.head_dim != 128) {
    const int64_t target_warps = int64_t(sms) * 32;  // ~2 waves of resident warps
    chunks = std::max<int64_t>(1, (target_warps + pairs - 1) / pairs);
  } else {
    // KV4, head_dim 128 (the shared-memory ring kernel): about 8 warps per SM (of the 12 that fit), n = round(8 SMs
    // / pairs) warps per (sequence, KV head): a warp streams its tokens at a rate that falls as an SM fills
    // (measured on the H200: ~32 tokens/us per warp at 4 warps per SM, ~23 at 8, ~17.5 at 12). The first 2 / 4 of
    // them share one chunk inside a CTA (shared-memory merge: no workspace, no merge kernel), the rest split the
    // context into chunks (flash-decoding). n <= 1: one warp per chunk, except when that fills 1 to 1.5 waves of
    // the resident warps: then 2 warps per chunk shorten the half-empty last wave. Fitted to `bench_attention
    // --plan-sweep` on the H200 (every split of 1..8 chunks x 1 warp and 1..4 chunks x 2 / 4 warps, batch 32-1024,
    // context 512-4096, GQA groups 4 and 8; data bench/results/decode-plan-sweep-h200-w.jsonl, check
    // bench/fit_decode_plan.py --tail): mean loss against the best split 0.2%, worst 5%, where the previous rule
    // (chunks only) lost 6.5% and up to 44%; on the final kernel's sweeps (-74b9f9c.jsonl, -w3.jsonl) 0.2-0.3%,
    // worst 4.6-5.0%. 3 warps per chunk (3-warp CTAs, 4 per SM) never won (-w3.jsonl) and was not kept.
    const int64_t n = std::llround(8.0 * sms / double(pairs));
    if (n <= 1) {
      const int ctas_per_sm =
          num_q_heads / layout.num_kv_heads > 8 ? kMinCtas<KvDType::kKv4, 2> : kMinCtas<KvDType::kKv4, 1>;
      const int resident = kWarpsPerCta * ctas_per_sm * sms;
      const double waves = double(pairs) / resident;
      warps = waves > 1.0 && waves < 1.5 ? 2 : 1;
    } else {
      warps = n >= 4 ? 4 : 2;
      chunks = std::max<int64_t>(1, std::llround(double(n) / warps));
    }
  }
  return plan_decode_chunks(batch, num_q_heads, layout, max_context, chunks, warps);
}

DecodePlan plan_decode_chunks(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                              int64_t chunks, int32_t warps) {
  QS_CHECK(batch > 0 && max_context > 0 && chunks > 0) << "decode attention: empty batch, context or split";
  QS_CHECK(warps_per_chunk_ok(layout, warps))
      << "decode attention: " << warps << " warps per chunk (1, or 2 / 4 for KV4 with head_dim 128)";
  int64_t chunk = (max_context + chunks - 1) / chunks;
  // At least 64 tokens per chunk: amortizes the partial write; 64 rather than 128 measured 17.2 -> 13.7 us at
  // batch 1, context 1024 on H100 (more warps, shorter load chains) and neutral at batch 64.
  chunk = std::max<int64_t>(64, (chunk + 15) / 16 * 16);
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
  plan.warps_per_chunk = warps;
  return plan;
}

Status run_decode(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream) {
  if (p.batch == 0) return Status::ok();
  if (plan.max_chunks > 1 && workspace == nullptr) return Status::error("decode attention: workspace required");
  if (plan.chunk_tokens <= 0 || plan.chunk_tokens % 16 != 0 || plan.max_chunks < 1)
    return Status::error("decode attention: plan chunk_tokens must be a positive multiple of 16");
  const int d = p.layout.head_dim;
  const bool kv4 = p.layout.dtype == KvDType::kKv4;
  const bool fp8 = p.layout.dtype == KvDType::kFp8;
  if (!kv4 && !fp8 && p.layout.dtype != KvDType::kFp16)
    return Status::error(std::string("decode attention: cache dtype ") + kv_dtype_name(p.layout.dtype) +
                         " not supported (kv4, fp16, fp8)");
  if (p.layout.num_kv_heads <= 0 || p.num_q_heads % p.layout.num_kv_heads != 0 ||
      p.num_q_heads / p.layout.num_kv_heads > kMaxGroup)
    return Status::error("decode attention: unsupported GQA group");
  if (p.layout.page_bytes() >= (int64_t(1) << 31)) return Status::error("decode attention: page of 2 GiB or more");
  const bool wide = p.num_q_heads / p.layout.num_kv_heads > 8;
  const int wpc = plan.warps_per_chunk;
  if (!warps_per_chunk_ok(p.layout, wpc))
    return Status::error("decode attention: plan warps_per_chunk " + std::to_string(wpc) +
                         " (1, or 2 / 4 for KV4 with head_dim 128)");
  if (d == 128) {
    if (kv4) {
      // Shared-memory ring of 8 tiles per warp, two tiles per step; 3 CTAs per SM (2 for GQA groups over 8). The
      // register-buffer loop (S = 0), 4 CTAs per SM or prefetching were measured slower on H100, and one tile per
      // step (6-tile ring) 1-5% slower on the H200 (bench/results/attention.md).
      if (wide)
        return wpc == 4   ? launch<128, KvDType::kKv4, 2, 8, 2, 4>(p, plan, workspace, stream)
               : wpc == 2 ? launch<128, KvDType::kKv4, 2, 8, 2, 2>(p, plan, workspace, stream)
                          : launch<128, KvDType::kKv4, 2, 8, 2>(p, plan, workspace, stream);
      return wpc == 4   ? launch<128, KvDType::kKv4, 1, 8, 3, 4>(p, plan, workspace, stream)
             : wpc == 2 ? launch<128, KvDType::kKv4, 1, 8, 3, 2>(p, plan, workspace, stream)
                        : launch<128, KvDType::kKv4, 1, 8, 3>(p, plan, workspace, stream);
    }
    if (fp8)
      return wide ? launch<128, KvDType::kFp8, 2>(p, plan, workspace, stream)
                  : launch<128, KvDType::kFp8, 1>(p, plan, workspace, stream);
    return wide ? launch<128, KvDType::kFp16, 2>(p, plan, workspace, stream)
                : launch<128, KvDType::kFp16, 1>(p, plan, workspace, stream);
  }
  if (d == 64) {
    if (kv4) return wide ? launch<64, KvDType::kKv4, 2>(p, plan, workspace, stream)
                         : launch<64, KvDType::kKv4, 1>(p, plan, workspace, stream);
    if (fp8) return wide ? launch<64, KvDType::kFp8, 2>(p, plan, workspace, stream)
                         : launch<64, KvDType::kFp8, 1>(p, plan, workspace, stream);
    return wide ? launch<64, KvDType::kFp16, 2>(p, plan, workspace, stream)
                : launch<64, KvDType::kFp16, 1>(p, plan, workspace, stream);
  }
  return Status::error("decode attention: head_dim must be 64 or 128");
}

}  // namespace qs::kernels
