// The Hopper (sm_90a) kernel template behind qgemm.h: INT8 wgmma.mma_async with the weights as the register A
// operand (output channels on the wgmma M side, dequantized in registers from the repacked fragments: raw nibbles
// for per-channel, one 32-bit multiply-add for g128, INT8 as-is for W8A8) and the tokens as B in shared memory
// (wgmma N = BM tokens), loaded by TMA with 128-byte swizzle.
// g128: the multiply-add gives the weights as unsigned bytes w8 + 128 (dequant_g128x4_biased), which go to an
// unsigned-A wgmma (u8 x s8) as they are; the k range that holds k tile 0 takes 128 * qsum[m] (the quantizer's
// exact INT32 sum of the token's codes) off its accumulators before any split-K sum, so every result is exactly
// sum w8 * x. This saves the xor per fragment register that a signed wgmma needs (g128 2-8% faster on H200,
// BENCHMARKS.md "g128 without the xor"). Magnitudes: |acc| <= 255 * 127 * K < 2^31 for K <= 66,000, and INT32
// sums wrap exactly anyway.
//
// Warp specialization: warpgroup 0 is the producer (one thread issues, per 128-wide k tile, a TMA of the
// activation tile [BM tokens x 128 B], a TMA of the block's repacked weight tiles viewed as a 2D u32 tensor
// [n/16][k/128 * tile u64 words], and for g128 a TMA of the (s2 | zn << 8) words) into a STAGES-deep ring guarded by
// full/empty mbarriers; warpgroups 1..2 are consumers, each owning MT m64 row tiles (64*MT output channels) x BM
// tokens of INT32 accumulators. setmaxnreg moves registers from the producer to the consumers. One wgmma group
// (a k tile) stays in flight while the consumer prepares the next tile's A fragments (two register buffers,
// wgmma.wait_group 1): the weight dequantization overlaps the MMAs and the tensor cores do not drain per k tile.
// Split-K (gridDim.z = S > 1): the S CTAs of one output tile form a thread-block cluster (1, 1, S); each takes a
// range of k tiles, stages its INT32 accumulators in its own shared memory, and after a cluster barrier each CTA
// sums 1/S of the tile's rows over the S CTAs through distributed shared memory and applies the epilogue, so the
// fixup is parallel, needs no global workspace and no counters (graph-safe), and stays bit-exact (integer sums).
// The alternative (plan.global_split, the sm80 kernel's scheme): every CTA writes its INT32 partial tile to the
// workspace and the CTA that completes a tile last (a self-resetting per-tile counter) sums them.
// Stream-K (template flag SK, plan.stream_k_ctas): a persistent grid of at most one CTA per SM, each taking an
// equal contiguous range of (output tile, k tile) units; the producer's ring runs on across tile boundaries, a
// finished tile's epilogue goes through per-warp staging after the ring, and a tile cut between CTAs is summed by
// the CTA that finishes its share last (INT32 partials in the workspace, a self-resetting counter per tile).
// Epilogue (non-persistent launches): while the consumers run the main loop, the producer warpgroup's three idle
// warps copy the tile's per-token (sx, xsum, qsum) and per-channel (scale, szero, bias) inputs into shared memory,
// so the epilogue reads only the residual from global memory (two output vectors per thread in flight); the SiLU*up
// variant (QGemmEpilogue::kSiluMul) is epilogue8's.
// Launch order: the grid is (output tiles, 1, splits), output tile blockIdx.x in raster order (qgemm_raster_tile,
// the plan's raster_m): groups of raster_m token tiles, token tiles fastest within a group, so that CTAs resident at
// once share weight tiles through L2 at large M (1 = weight tiles fastest).
// Tile configs: the QS_QGEMM_SM90 lines of qgemm_configs.def.
#pragma once

#include <cuda.h>

#include "kernels/common/cluster.h"
#include "kernels/common/device_once.h"
#include "kernels/common/pdl.h"
#include "kernels/common/tma.h"
#include "kernels/common/wgmma.h"
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"

namespace qs::kernels::qgemm_detail {

template <int V, int CONFIG>
struct Sm90Cfg {
  static constexpr bool kW4 = V != int(WeightFormat::kW8A8);
  static constexpr bool kG128 = V == int(WeightFormat::kW4A8G128);
  static constexpr int kConsumers = 2;
  static_assert(kQGemmConfigs[CONFIG].sm90, "an sm90 config");
  static constexpr int BM = kQGemmConfigs[CONFIG].bm, MT = kQGemmConfigs[CONFIG].mt;
  static constexpr int BN = 64 * MT * kConsumers;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kTileBytes = kW4 ? 1024 : 2048;
  static constexpr int kXBytes = BM * kBK;
  static constexpr int kWBytes = (BN / 16) * kTileBytes;
  static constexpr int kSBytes = kG128 ? BN * 2 : 0;
  static constexpr int kTxBytes = kXBytes + kWBytes + kSBytes;
  static constexpr int kStageBytes = (kTxBytes + 1023) / 1024 * 1024;
  // As many stages as 200 KB hold (up to 16): the k-tile rate is bound by how fast the ring streams the tiles
  // (bench_gemm --probe), and more stages keep more bytes in flight for the small-tile configs (10-16 stages; 2-5%
  // on a layer's linears at M 64-128, BENCHMARKS.md).
  static constexpr int STAGES = (200 * 1024) / kStageBytes > 16 ? 16 : (200 * 1024) / kStageBytes;
  static constexpr int kCPitch = BN + 4;
  // Per-warp staging of the persistent (stream-K) epilogue, after the ring (which the producer keeps filling for
  // the next tile meanwhile): 32 tokens x 16 channels (+4 pad: conflict-free) INT32 per consumer warp.
  static constexpr int kEpiPitch = 20;
  static constexpr int kEpiOffset = STAGES * kStageBytes > BM * kCPitch * 4 ? STAGES * kStageBytes : BM * kCPitch * 4;
  static constexpr int kEpiBytes = 4 * kConsumers * 32 * kEpiPitch * 4;
  // The non-persistent kernel's epilogue inputs, loaded into the same area (unused without stream-K) by the idle
  // producer warps (warps 1..3) while the main loop runs: FP16 sx[BM], xsum[BM], scale[BN], szero[BN], bias[BN]
  // (element offsets below); named barrier 2 joins those warps and the consumers before the epilogue reads them.
  static constexpr int kParamSx = 0, kParamXsum = BM, kParamScale = 2 * BM, kParamSzero = 2 * BM + BN,
                       kParamBias = 2 * BM + 2 * BN;
  static constexpr int kParamBytes = 2 * (2 * BM + 3 * BN);
  // g128: INT32 qsum[BM] after the FP16 inputs (byte offset).
  static constexpr int kParamQsumOffset = (kParamBytes + 15) / 16 * 16;
  static constexpr int kParamWarpThreads = 96;
  static constexpr int kParamBarrierThreads = 128 * kConsumers + kParamWarpThreads;
  static_assert(kParamQsumOffset + 4 * BM <= kEpiBytes, "epilogue inputs exceed their area");
  static constexpr int kSmemBytes = kEpiOffset + kEpiBytes + 1024;
  static_assert(BM % 32 == 0, "the staged epilogue takes 32 tokens at a time");
  static_assert(STAGES >= 2, "stage too large");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 limit");
};

// PROBE (bench_gemm --probe only; 0 everywhere else) removes one part of the main loop to see what limits it:
// 1 = no MMAs (the dequantized fragments are folded into the accumulators, so the loads and dequantization stay),
// 2 = no fragment loads or dequantization (MMAs on zero fragments), 3 = neither (the TMA ring's streaming rate),
// 4 = neither, with tm_w a contiguous view of the weights (rows of one 1 KB tile): each box reads BN/16 KB of
// consecutive memory instead of BN/16 tiles K/128 KB apart (what a contiguous weight layout would stream),
// 5 = MMAs on zero fragments and no TMA (the producer only arrives: the tensor cores' rate in this loop),
// 6 = the full consumer loop with only the activation tile loaded (weight fragments from stale shared memory),
// 7 = MMAs on zero fragments issued back to back (no TMA, no barrier, no wait until the end: the wgmma peak),
// 8 = g128 with the per-channel fragment path (no group scale reads, no multiply-add: the g128 dequant's cost),
// 9 = g128 without the TMA of the group scales (the consumers read stale ones: what that third copy per stage
// costs).
// (The wgmma's operand types do not matter: s8.s8, u8.s8, u8.u8 and s8.u8 ran at the same rate, BENCHMARKS.md.)
template <int V, int CONFIG, bool SK, int PROBE = 0>
__global__ void __launch_bounds__(Sm90Cfg<V, CONFIG>::kThreads, 1)
    qgemm_sm90_kernel(const QGemmParams p, const __grid_constant__ CUtensorMap tm_x,
                      const __grid_constant__ CUtensorMap tm_w, const __grid_constant__ CUtensorMap tm_s,
                      int tiles_per_split, int32_t* partial, int* counters, int sk_per, int raster_m,
                      int l2_prefetch) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using C = Sm90Cfg<V, CONFIG>;
  // What the probes keep: the MMAs (else the fragments are folded into the accumulators), the fragment loads and
  // dequantization (else zero fragments), the producer's ring and the consumers' barriers and waits.
  constexpr bool kMma = !(PROBE == 1 || PROBE == 3 || PROBE == 4);
  constexpr bool kFrags = PROBE < 2 || PROBE == 6 || PROBE >= 8;
  constexpr bool kRing = PROBE != 7;
  constexpr bool kG128Math = C::kG128 && PROBE != 8;
  constexpr bool kScaleTma = C::kG128 && PROBE != 9;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[C::STAGES], empty_bar[C::STAGES];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* smem = smem_raw + (base - raw);
  const int tid = threadIdx.x, wg = tid / 128, lane = tid & 31;
  const int kgs = p.k / kBK;
  const int tiles_m = (p.m + C::BM - 1) / C::BM, tiles_n = (p.n + C::BN - 1) / C::BN;
  // The CTA's work: units (output tile, k tile), numbered tile * kgs + k tile, output tiles in raster order
  // (qgemm_raster_tile: the token tiles of a group fastest). Stream-K (SK, sk_per units per CTA): the contiguous
  // range of sk_per units of this CTA, crossing tile boundaries. Otherwise one segment: output tile blockIdx.x and
  // split blockIdx.z's k range.
  int u_begin, u_end;
  if constexpr (SK) {
    const int units = tiles_n * tiles_m * kgs;
    u_begin = int(blockIdx.x) * sk_per;
    u_end = min(units, u_begin + sk_per);
  } else {
    const int tile = int(blockIdx.x);
    u_begin = tile * kgs + int(blockIdx.z) * tiles_per_split;
    u_end = min((tile + 1) * kgs, u_begin + tiles_per_split);
  }
  // Output tile -> its first channel and token.
  auto tile_origin = [&](int tile, int& n0, int& m0) {
    int nt, mt;
    qgemm_raster_tile(tile, tiles_m, tiles_n, raster_m, nt, mt);
    n0 = nt * C::BN, m0 = mt * C::BM;
  };
  const uint32_t full0 = ptx::smem_addr(full_bar), empty0 = ptx::smem_addr(empty_bar);

  if (tid == 0) {
    for (int s = 0; s < C::STAGES; ++s) {
      ptx::mbar_init(full0 + 8 * s, 1);
      ptx::mbar_init(empty0 + 8 * s, 4 * C::kConsumers);  // one arrive per consumer warp
    }
    ptx::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    ptx::setmaxnreg_dec<40>();
    if (tid == 0 && kRing) {
      // PDL (pdl.h; l2_prefetch when the launch has it): the weights (and g128 scales) of the first ring slots
      // depend on no earlier kernel: they are prefetched into L2 before pdl_wait(), while the previous kernel
      // finishes, and the ring then copies them from L2 in its usual order. (Copying them into the ring before the
      // wait instead queued every early weight tile ahead of the first activation tile, so without an earlier
      // kernel to overlap the MMAs started only once the whole early prefetch had landed: the Llama-3-8B linears at
      // M 64-128 ran 5-9% slower than the same plans in earlier calls.)
      if (PROBE == 0 && l2_prefetch)
        for (int u = u_begin; u < min(u_end, u_begin + C::STAGES); ++u) {
          const int tile = u / kgs, kt = u - tile * kgs;
          int n0, m0;
          tile_origin(tile, n0, m0);
          ptx::tma_prefetch_l2_2d(&tm_w, kt * (C::kTileBytes / 8), n0 / 16);
          if constexpr (C::kG128) ptx::tma_prefetch_l2_2d(&tm_s, n0, kt);
        }
      pdl_wait();
      int it = 0;  // ring position, continuous across the CTA's tiles
      for (int u = u_begin; u < u_end; ++u, ++it) {
        const int tile = u / kgs, kt = u - tile * kgs;
        int n0, m0;
        tile_origin(tile, n0, m0);
        const int slot = it % C::STAGES;
        if (it >= C::STAGES) ptx::mbar_wait(empty0 + 8 * slot, ((it / C::STAGES) + 1) & 1);
        const uint32_t st = base + slot * C::kStageBytes, bar = full0 + 8 * slot;
        if constexpr (PROBE == 5) {
          ptx::mbar_arrive(bar);
          continue;
        }
        const int tx = PROBE == 6 ? C::kXBytes : C::kTxBytes - (C::kG128 && !kScaleTma ? C::kSBytes : 0);
        ptx::mbar_arrive_expect_tx(bar, tx);
        ptx::tma_load_2d(st, &tm_x, bar, kt * kBK, m0);
        if constexpr (PROBE == 6) continue;
        if constexpr (PROBE == 4)
          ptx::tma_load_2d(st + C::kXBytes, &tm_w, bar, 0, ((n0 / C::BN) * kgs + kt) * (C::BN / 16));
        else
          ptx::tma_load_2d(st + C::kXBytes, &tm_w, bar, kt * (C::kTileBytes / 8), n0 / 16);
        if constexpr (kScaleTma) ptx::tma_load_2d(st + C::kXBytes + C::kWBytes, &tm_s, bar, n0, kt);
      }
    } else if (!SK && tid >= 32) {
      // Warps 1..3: the tile's epilogue inputs into shared memory (zero where absent or out of range), so the
      // epilogue after the main loop reads no global memory but the residual; then signal the consumers.
      pdl_wait();
      uint16_t* es = reinterpret_cast<uint16_t*>(smem + C::kEpiOffset);
      int n0, m0;
      tile_origin(int(blockIdx.x), n0, m0);
      const bool per_channel = p.variant == WeightFormat::kW4A8PerChannel;
      int32_t* qs = reinterpret_cast<int32_t*>(smem + C::kEpiOffset + C::kParamQsumOffset);
      for (int i = tid - 32; i < C::BM; i += C::kParamWarpThreads) {
        const int m = m0 + i;
        es[C::kParamSx + i] = m < p.m ? p.sx[m] : uint16_t(0);
        es[C::kParamXsum + i] = m < p.m && per_channel ? p.xsum[m] : uint16_t(0);
        if constexpr (C::kG128) qs[i] = m < p.m ? p.qsum[m] : 0;
      }
      for (int i = tid - 32; i < C::BN; i += C::kParamWarpThreads) {
        const int n = n0 + i;
        const bool ok = n < p.n;
        es[C::kParamScale + i] = ok ? p.scale[n] : uint16_t(0);
        es[C::kParamSzero + i] = ok && per_channel ? p.szero[n] : uint16_t(0);
        es[C::kParamBias + i] = ok && p.bias ? p.bias[n] : uint16_t(0);
      }
      ptx::named_barrier_arrive(2, C::kParamBarrierThreads);
    }
    if (!SK && gridDim.z > 1 && !counters) {  // the consumers' two cluster barriers count every thread
      ptx::cluster_sync();
      ptx::cluster_sync();
    }
  } else {
    ptx::setmaxnreg_inc<232>();
    pdl_wait();  // the epilogue's residual and the split-K workspace come from earlier kernels
    const int cw = wg - 1, w = (tid / 32) & 3, g = lane >> 2, t = lane & 3;
    const int nthreads = 128 * C::kConsumers, t0 = tid - 128;
    int32_t acc[C::MT][C::BM / 2];

    // A fragments of one k tile (4 k32 steps x MT m64 tiles), read from the ring slot and dequantized to INT8.
    auto prep = [&](int slot, uint32_t(&a)[4][C::MT][4]) {
      const uint32_t ws = base + slot * C::kStageBytes + C::kXBytes;
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt) {
        const int rt = (cw * C::MT + mt) * 4 + w;  // 16-row tile within the block
        if constexpr (C::kW4) {
          uint32_t s2v[2] = {0, 0}, zn4[2] = {0, 0};
          if constexpr (kG128Math) {
            const uint16_t* ss =
                reinterpret_cast<const uint16_t*>(smem + slot * C::kStageBytes + C::kXBytes + C::kWBytes);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const uint32_t v = ss[rt * 16 + g + 8 * h];
              unpack_s2zn(v, s2v[h], zn4[h]);
            }
          }
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const uint4 v = ptx::lds128(ws + rt * C::kTileBytes + (c * 32 + lane) * 16);
            const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              uint32_t lo = words[j] & 0x0f0f0f0fu, hi = (words[j] >> 4) & 0x0f0f0f0fu;
              if constexpr (kG128Math) {
                lo = dequant_g128x4_biased(lo, s2v[0], zn4[0]);
                hi = dequant_g128x4_biased(hi, s2v[1], zn4[1]);
              }
              a[2 * c + j / 2][mt][2 * (j % 2)] = lo;
              a[2 * c + j / 2][mt][2 * (j % 2) + 1] = hi;
            }
          }
        } else {
#pragma unroll
          for (int s = 0; s < 4; ++s) {
            const uint4 v = ptx::lds128(ws + rt * C::kTileBytes + (s * 32 + lane) * 16);
            a[s][mt][0] = v.x;
            a[s][mt][1] = v.y;
            a[s][mt][2] = v.z;
            a[s][mt][3] = v.w;
          }
        }
      }
    };
    // k tile i of a segment of nk (ring position it): issue its wgmmas with `cur`, then wait until only this group
    // is in flight (so the previous group, which read `next` and the previous ring slot, is done), hand that slot
    // back to the producer, and prepare the next tile's fragments into `next` while this group runs: the tensor
    // cores always have one group queued, and the dequantization overlaps the MMAs.
    auto step = [&](int it, int i, int nk, uint32_t(&cur)[4][C::MT][4], uint32_t(&next)[4][C::MT][4]) {
      const int slot = it % C::STAGES;
      const uint32_t st = base + slot * C::kStageBytes;
      ptx::wgmma_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint64_t desc = ptx::wgmma_desc_k128sw(st + s * 32);
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt) {
          if constexpr (!kMma) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][e] ^= int32_t(cur[s][mt][e]);
          } else {
            ptx::wgmma_i8_rs<C::BM, C::kG128>(acc[mt], cur[s][mt], desc, 1);
          }
        }
      }
      ptx::wgmma_commit();
      if constexpr (!kRing) return;
      ptx::wgmma_wait<1>();
      if (i > 0) {
        __syncwarp();
        if (lane == 0) ptx::mbar_arrive(empty0 + 8 * ((it - 1) % C::STAGES));
      }
      if (i + 1 < nk) {
        const int nslot = (it + 1) % C::STAGES;
        ptx::mbar_wait(full0 + 8 * nslot, ((it + 1) / C::STAGES) & 1);
        if constexpr (kFrags) prep(nslot, next);
      }
    };
    // g128: acc -= 128 * qsum of each accumulator's token (tokens m0 + 8j + 2t + {0, 1}), qsum(token offset) -> INT32.
    auto unbias = [&](auto qsum_at) {
#pragma unroll
      for (int j = 0; j < C::BM / 8; ++j) {
        const int32_t q0 = 128 * qsum_at(8 * j + 2 * t), q1 = 128 * qsum_at(8 * j + 2 * t + 1);
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt) {
          acc[mt][4 * j] -= q0, acc[mt][4 * j + 2] -= q0;
          acc[mt][4 * j + 1] -= q1, acc[mt][4 * j + 3] -= q1;
        }
      }
    };
    // Stream-K epilogue of a finished tile, per warp (no barrier with the other consumers; the ring stays the
    // producer's): 32 tokens x the warp's 16 channels of one m64 tile at a time through the warp's staging area,
    // written as 8-channel rows.
    auto staged_epilogue = [&](int m0, int n0) {
      int32_t* ebuf = reinterpret_cast<int32_t*>(smem + C::kEpiOffset) + (cw * 4 + w) * 32 * C::kEpiPitch;
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt) {
        const int cb = n0 + (cw * C::MT + mt) * 64 + 16 * w;
#pragma unroll
        for (int jc = 0; jc < C::BM / 32; ++jc) {
          __syncwarp();
#pragma unroll
          for (int jj = 0; jj < 4; ++jj)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              ebuf[(8 * jj + 2 * t + (e & 1)) * C::kEpiPitch + g + 8 * (e >> 1)] = acc[mt][4 * (4 * jc + jj) + e];
          __syncwarp();
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int i = lane + 32 * r, tl = i >> 1, half = i & 1;
            const int m = m0 + 32 * jc + tl, n = cb + 8 * half;
            if (m >= p.m || n >= p.n) continue;
            const int4 v0 = *reinterpret_cast<const int4*>(ebuf + tl * C::kEpiPitch + 8 * half);
            const int4 v1 = *reinterpret_cast<const int4*>(ebuf + tl * C::kEpiPitch + 8 * half + 4);
            if (p.acc_out) {
              int4* dst = reinterpret_cast<int4*>(p.acc_out + size_t(m) * p.n + n);
              dst[0] = v0;
              dst[1] = v1;
            } else {
              const int32_t a8[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
              epilogue8(p, m, n, a8);
            }
          }
        }
      }
    };

    // The epilogue inputs of outputs (m, n..n+7) of the CTA's tile (m0, n0) from the producer warps' copy (non-SK).
    auto epi_in_smem = [&](int m, int n, int m0, int n0) {
      const uint16_t* es = reinterpret_cast<const uint16_t*>(smem + C::kEpiOffset);
      EpiIn in;
      in.sxm = __half2float(__ushort_as_half(es[C::kParamSx + m - m0]));
      in.xs = __half2float(__ushort_as_half(es[C::kParamXsum + m - m0]));
      in.sv = *reinterpret_cast<const uint4*>(es + C::kParamScale + (n - n0));
      in.zv = *reinterpret_cast<const uint4*>(es + C::kParamSzero + (n - n0));
      in.bv = *reinterpret_cast<const uint4*>(es + C::kParamBias + (n - n0));
      in.rv = epi_residual(p, m, n);
      return in;
    };

    // One segment: units [u, seg_end) of one output tile, ring positions from it0.
    auto segment = [&](int u, int seg_end, int it0) {
      const int tile = u / kgs, kt0 = u - tile * kgs, nk = seg_end - u;
      int n0, m0;
      tile_origin(tile, n0, m0);
#pragma unroll
      for (int i = 0; i < C::MT; ++i)
#pragma unroll
        for (int e = 0; e < C::BM / 2; ++e) acc[i][e] = 0;
      uint32_t a0[4][C::MT][4], a1[4][C::MT][4];
      if constexpr (!kFrags) {
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
          for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e) a0[s][mt][e] = a1[s][mt][e] = 0;
      }
      if constexpr (kRing) ptx::mbar_wait(full0 + 8 * (it0 % C::STAGES), (it0 / C::STAGES) & 1);
      if constexpr (kFrags) prep(it0 % C::STAGES, a0);
      for (int i = 0; i < nk; i += 2) {
        step(it0 + i, i, nk, a0, a1);
        if (i + 1 < nk) step(it0 + i + 1, i + 1, nk, a1, a0);
      }
      ptx::wgmma_wait<0>();
      if (seg_end == u_end) pdl_launch_dependents();  // the CTA's MMAs are done (pdl.h)

      if constexpr (SK) {
        if constexpr (C::kG128)
          if (kt0 == 0) unbias([&](int i) { return m0 + i < p.m ? __ldg(p.qsum + m0 + i) : 0; });
        // The segment's last slot goes back too: the producer is loading the next tile.
        __syncwarp();
        if (lane == 0) ptx::mbar_arrive(empty0 + 8 * ((it0 + nk - 1) % C::STAGES));
        bool emit = kt0 == 0 && nk == kgs;  // the whole tile is this CTA's
        if (!emit) {
          // A cut tile: CTAs b_first..b_last share it. Each writes its INT32 partial (in its own slot: slot 0 for
          // a CTA's first segment, 1 for its last; a fragment-order layout, coalesced) and the one that finishes
          // last adds the others' partials to its registers and writes the tile.
          const int a = tile * kgs, b_first = a / sk_per, b_last = (a + kgs - 1) / sk_per, me = int(blockIdx.x);
          auto slot_of = [&](int b) {
            return reinterpret_cast<int4*>(partial) + size_t(2 * b + (b * sk_per >= a ? 0 : 1)) * (C::BM * C::BN / 4);
          };
          int4* mine = slot_of(me);
#pragma unroll
          for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
            for (int q = 0; q < C::BM / 8; ++q)
              __stcg(mine + (mt * (C::BM / 8) + q) * nthreads + t0,
                     make_int4(acc[mt][4 * q], acc[mt][4 * q + 1], acc[mt][4 * q + 2], acc[mt][4 * q + 3]));
          __threadfence();
          ptx::named_barrier(1, nthreads);
          emit = splitk_is_last(counters + b_first, b_last - b_first + 1, tid == 128,
                                [] { ptx::named_barrier(1, 128 * C::kConsumers); });
          ptx::named_barrier(1, nthreads);  // every consumer has read the shared flag before it is reused
          if (emit) {
            for (int b = b_first; b <= b_last; ++b) {
              if (b == me) continue;
              const int4* src = slot_of(b);
#pragma unroll
              for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
                for (int q = 0; q < C::BM / 8; ++q) {
                  const int4 v = __ldcg(src + (mt * (C::BM / 8) + q) * nthreads + t0);
                  acc[mt][4 * q] += v.x, acc[mt][4 * q + 1] += v.y, acc[mt][4 * q + 2] += v.z,
                      acc[mt][4 * q + 3] += v.w;
                }
            }
          }
        }
        if (emit) staged_epilogue(m0, n0);
      } else {
        // Epilogue: every consumer is done with the ring (all TMAs it waited for have landed), and the producer
        // warps' copy of the epilogue inputs is complete.
        ptx::named_barrier(2, C::kParamBarrierThreads);
        if constexpr (C::kG128)
          if (blockIdx.z == 0) {
            const int2* qs = reinterpret_cast<const int2*>(smem + C::kEpiOffset + C::kParamQsumOffset);
            unbias([&](int i) {
              const int2 v = qs[i >> 1];
              return (i & 1) ? v.y : v.x;
            });
          }
        int32_t* cs = reinterpret_cast<int32_t*>(smem);
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
          for (int j = 0; j < C::BM / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int ch = (cw * C::MT + mt) * 64 + 16 * w + g + 8 * (e >> 1);
              const int tok = 8 * j + 2 * t + (e & 1);
              cs[tok * C::kCPitch + ch] = acc[mt][4 * j + e];
            }
        if (gridDim.z == 1) {
          ptx::named_barrier(1, nthreads);
          // Two output vectors per thread at a time, their residual loads issued before either is stored.
          constexpr int kPer = C::BM * C::BN / 8 / (128 * C::kConsumers);
          static_assert(kPer % 2 == 0, "the epilogue takes output vectors in pairs");
          for (int j = 0; j < kPer; j += 2) {
            int mm[2], nn[2];
            bool ok[2];
            EpiIn in[2];
            int32_t a8[2][8];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int i = t0 + (j + h) * nthreads;
              const int r = i / (C::BN / 8), c8 = (i % (C::BN / 8)) * 8;
              mm[h] = m0 + r, nn[h] = n0 + c8;
              ok[h] = mm[h] < p.m && nn[h] < p.n;
              const int4 v0 = *reinterpret_cast<const int4*>(cs + r * C::kCPitch + c8);
              const int4 v1 = *reinterpret_cast<const int4*>(cs + r * C::kCPitch + c8 + 4);
              a8[h][0] = v0.x, a8[h][1] = v0.y, a8[h][2] = v0.z, a8[h][3] = v0.w;
              a8[h][4] = v1.x, a8[h][5] = v1.y, a8[h][6] = v1.z, a8[h][7] = v1.w;
              if (ok[h] && !p.acc_out) in[h] = epi_in_smem(mm[h], nn[h], m0, n0);
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              if (!ok[h]) continue;
              if (p.acc_out) {
                int4* dst = reinterpret_cast<int4*>(p.acc_out + size_t(mm[h]) * p.n + nn[h]);
                dst[0] = make_int4(a8[h][0], a8[h][1], a8[h][2], a8[h][3]);
                dst[1] = make_int4(a8[h][4], a8[h][5], a8[h][6], a8[h][7]);
              } else {
                epilogue8(p, mm[h], nn[h], a8[h], in[h]);
              }
            }
          }
        } else if (counters) {
          // Global split-K: write this split's INT32 partial tile; the CTA that completes the tile last sums the
          // partials (through L2) and applies the epilogue.
          ptx::named_barrier(1, nthreads);
          for (int i = t0; i < C::BM * C::BN / 8; i += nthreads) {
            const int r = i / (C::BN / 8), c8 = (i % (C::BN / 8)) * 8;
            const int m = m0 + r, n = n0 + c8;
            if (m >= p.m || n >= p.n) continue;
            int4* dst = reinterpret_cast<int4*>(partial + (size_t(blockIdx.z) * p.m + m) * p.n + n);
            dst[0] = *reinterpret_cast<const int4*>(cs + r * C::kCPitch + c8);
            dst[1] = *reinterpret_cast<const int4*>(cs + r * C::kCPitch + c8 + 4);
          }
          __threadfence();
          ptx::named_barrier(1, nthreads);
          if (splitk_is_last(counters + blockIdx.x, int(gridDim.z), tid == 128,
                             [] { ptx::named_barrier(1, 128 * C::kConsumers); }))
            splitk_fixup<C::BM, C::BN>(p, partial, m0, n0, t0, nthreads);
        } else {
          // Cluster split-K: every CTA's partial tile is staged; this CTA reduces its share of the valid rows.
          ptx::cluster_sync();
          const int splits = int(gridDim.z);
          const int rows = min(C::BM, p.m - m0);
          const int items = rows * (C::BN / 8);
          const int per = (items + splits - 1) / splits;
          const int i0 = int(blockIdx.z) * per, i1 = min(items, i0 + per);
          const uint32_t cs_addr = ptx::smem_addr(cs);
          for (int i = i0 + t0; i < i1; i += nthreads) {
            const int r = i / (C::BN / 8), c8 = (i % (C::BN / 8)) * 8;
            const int m = m0 + r, n = n0 + c8;
            if (n >= p.n) continue;
            const uint32_t off = cs_addr + uint32_t(r * C::kCPitch + c8) * 4u;
            int4 v[kQGemmMaxClusterSplits][2];
#pragma unroll
            for (int sp = 0; sp < kQGemmMaxClusterSplits; ++sp)
              if (sp < splits) {
                const uint32_t a = ptx::dsmem_map(off, uint32_t(sp));
                v[sp][0] = ptx::dsmem_ld128(a);
                v[sp][1] = ptx::dsmem_ld128(a + 16);
              }
            int32_t a8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
            for (int sp = 0; sp < kQGemmMaxClusterSplits; ++sp)
              if (sp < splits) {
                a8[0] += v[sp][0].x, a8[1] += v[sp][0].y, a8[2] += v[sp][0].z, a8[3] += v[sp][0].w;
                a8[4] += v[sp][1].x, a8[5] += v[sp][1].y, a8[6] += v[sp][1].z, a8[7] += v[sp][1].w;
              }
            if (p.acc_out) {
              int4* dst = reinterpret_cast<int4*>(p.acc_out + size_t(m) * p.n + n);
              dst[0] = make_int4(a8[0], a8[1], a8[2], a8[3]);
              dst[1] = make_int4(a8[4], a8[5], a8[6], a8[7]);
            } else {
              epilogue8(p, m, n, a8, epi_in_smem(m, n, m0, n0));
            }
          }
          ptx::cluster_sync();  // the peers have read this CTA's shared memory: it may exit
        }
      }
    };
    if constexpr (SK) {
      for (int u = u_begin, it0 = 0; u < u_end;) {
        const int seg_end = min(u_end, (u / kgs + 1) * kgs);
        segment(u, seg_end, it0);
        it0 += seg_end - u;
        u = seg_end;
      }
    } else {
      segment(u_begin, u_end, 0);
    }
  }
#endif
}

// Host side (qgemm.cu): the tensor maps. The activation map is per call; the weight and g128-scale maps depend
// only on the weights and the config's BN (built once by qgemm_prepare, or per call without a prepared object).
Status make_sm90_x_map(const QGemmParams& p, int bm, CUtensorMap* map);
Status make_sm90_weight_maps(WeightFormat v, int n, int k, const void* w, const uint16_t* s2zn, int bn,
                             CUtensorMap* wmap, CUtensorMap* smap);

// splits > 1 with `counters` (and `partial`, the workspace's INT32 planes): global split-K; without: one cluster
// of `splits` CTAs per output tile. sk_per > 0: stream-K, sk_grid CTAs of sk_per units each (splits must be 1;
// `counters` and `partial` from qgemm_stream_k_workspace's layout).
template <int V, int CONFIG>
Status launch_qgemm_sm90(const QGemmParams& p, int splits, int tiles_per_split, int32_t* partial, int* counters,
                         int sk_grid, int sk_per, int raster_m, const CUtensorMap& wmap, const CUtensorMap& smap,
                         cudaStream_t stream) {
  using C = Sm90Cfg<V, CONFIG>;
  static std::atomic<uint64_t> attr_set{0};  // per device (device_once.h)
  QS_RETURN_IF_ERROR(once_per_device(attr_set, [] {
    QS_CUDA_RETURN(cudaFuncSetAttribute(qgemm_sm90_kernel<V, CONFIG, false>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    QS_CUDA_RETURN(cudaFuncSetAttribute(qgemm_sm90_kernel<V, CONFIG, true>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    return Status::ok();
  }));
  if (splits < 1 || splits > kQGemmMaxClusterSplits)
    return Status::error("qgemm: sm90 split-K factor must be in [1, 8] (a cluster), got " + std::to_string(splits));
  CUtensorMap xmap;
  QS_RETURN_IF_ERROR(make_sm90_x_map(p, C::BM, &xmap));
  if (raster_m < 1) return Status::error("qgemm: raster group must be >= 1 token tile, got " + std::to_string(raster_m));
  const int64_t tiles = int64_t((p.n + C::BN - 1) / C::BN) * ((p.m + C::BM - 1) / C::BM);
  if (tiles * (p.k / kBK) > INT32_MAX) return Status::error("qgemm: too many output tiles x k tiles for one launch");
  const dim3 grid(unsigned(tiles), 1, splits);
  // Programmatic dependent launch (pdl.h): with it, the producer prefetches its first weight tiles before pdl_wait().
  LaunchShape l{grid, dim3(C::kThreads), size_t(C::kSmemBytes), stream};
  if (sk_per > 0) {
    if (splits != 1 || !counters || !partial || sk_grid < 1)
      return Status::error("qgemm: a stream-K launch needs splits == 1, a grid and its workspace");
    l.grid = dim3(unsigned(sk_grid));
    QS_CUDA_RETURN(launch_pdl(l, qgemm_sm90_kernel<V, CONFIG, true>, p, xmap, wmap, smap, tiles_per_split, partial,
                              counters, sk_per, raster_m, int(pdl_enabled())));
  } else {
    const bool cluster = splits > 1 && !counters;  // split-K through a (1, 1, splits) cluster
    if (cluster) l.cluster_z = unsigned(splits);
    QS_CUDA_RETURN(launch_pdl(l, qgemm_sm90_kernel<V, CONFIG, false>, p, xmap, wmap, smap, tiles_per_split,
                              cluster || splits == 1 ? static_cast<int32_t*>(nullptr) : partial,
                              cluster || splits == 1 ? static_cast<int*>(nullptr) : counters, 0, raster_m,
                              int(pdl_enabled())));
  }
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels::qgemm_detail
