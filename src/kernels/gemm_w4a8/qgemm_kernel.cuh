// The INT8 tensor-core GEMM kernel template behind qgemm.h (sm_80+ design: mma.sync.m16n8k32.s8, cp.async
// multistage ring, weights as the A operand in fragment order, tokens as B through ldmatrix).
//
// Block tile: BN weight rows (output channels) x BM tokens x 128 k per pipeline stage (one g128 group). Each
// warp owns WTN = BN/WARPS_N rows (MT mma row tiles of 16) x WTM = BM/WARPS_M tokens (NT tiles of 8). A stage in
// shared memory holds the block's weight tiles exactly as repacked (repack.h; a lane's 16-byte load is its
// fragments), the activation rows [BM][128 B] with 16-byte chunks XOR-swizzled by row (conflict-free
// ldmatrix), and for g128 the BN (s2 | zn << 8) words of the stage's group. W4 nibbles become INT8 in registers:
// AND/shift for per-channel, plus one 32-bit multiply-add by s2 and the biased zero and one xor for g128
// (dequant_g128x4).
// Split-K: blockIdx.z takes a range of k tiles; with splits > 1 every block writes its INT32 partial tile, and the
// block that finishes a tile last (a self-resetting per-tile counter in the workspace) sums the partials and
// applies the epilogue (splitk_fixup), so split-K needs no second kernel. The epilogue stages the accumulators in
// shared memory and writes 16-byte coalesced rows.
// Included by the .cu files that instantiate it (one per weight family) and by the dispatcher.
#pragma once

#include <cuda_fp16.h>

#include "kernels/common/device_once.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/mma.h"
#include "kernels/common/pdl.h"
#include "kernels/common/tma.h"
#include "kernels/gemm_w4a8/qgemm.h"

namespace qs::kernels::qgemm_detail {

constexpr int kBK = 128;

// Tile configurations: kQGemmConfigs (qgemm_configs.def), indexed by QGemmPlan::config.

template <int V, int CONFIG>
struct Cfg {
  static constexpr bool kW4 = V != int(WeightFormat::kW8A8);
  static constexpr bool kG128 = V == int(WeightFormat::kW4A8G128);
  static_assert(!kQGemmConfigs[CONFIG].sm90, "an sm80 config");
  static constexpr int BN = kQGemmConfigs[CONFIG].bn, BM = kQGemmConfigs[CONFIG].bm;
  static constexpr int WARPS_N = kQGemmConfigs[CONFIG].warps_n, WARPS_M = kQGemmConfigs[CONFIG].warps_m;
  static constexpr int kThreads = 32 * WARPS_N * WARPS_M;
  static constexpr int WTN = BN / WARPS_N, MT = WTN / 16;
  static constexpr int WTM = BM / WARPS_M, NT = WTM / 8;
  static constexpr int kTileBytes = kW4 ? 1024 : 2048;  // one 16 x 128 weight tile
  static constexpr int kWBytes = (BN / 16) * kTileBytes;
  static constexpr int kXBytes = BM * kBK;
  static constexpr int kSBytes = kG128 ? BN * 2 : 0;
  static constexpr int kStageBytes = kWBytes + kXBytes + kSBytes;
  // W4 small-token tiles are weight-streaming: an 8-deep ring (49 KB a block) keeps more bytes in flight
  // (measured 10-45% faster at M <= 16 on H100); W8 (measured slower that way) and larger tiles keep 3-4 stages.
  static constexpr int STAGES = (kW4 && BM <= 16) ? 8 : (kStageBytes * 4 <= 100 * 1024 ? 4 : 3);
  static constexpr int kCPitch = BN + 4;  // staged INT32 accumulators, per token row
  static constexpr int kSmemBytes =
      STAGES * kStageBytes > BM * kCPitch * 4 ? STAGES * kStageBytes : BM * kCPitch * 4;
  static_assert(MT >= 1 && NT >= 1 && WTN % 16 == 0 && WTM % 8 == 0, "bad tile shape");
  static_assert(kStageBytes % 16 == 0, "stages must stay 16-byte aligned");
};

// g128 level-2 dequantization of four nibbles (one a byte) to INT8, formats.h dequant_w4_g128_to_int8: with the
// biased zero zb = zn + 128 (in [0, 128]) each byte of q*s2 + zb lies in [0, 255] whenever the result lies in the
// INT8 range, which the protective range guarantees, so one 32-bit multiply-add makes no carry between bytes;
// xor 0x80 removes the bias (w8 + 128 -> w8). Equal to the mod-256 byte-wise add for every in-range weight.
// dequant_g128x4_biased: the bytes before that xor, w8 + 128 as unsigned bytes: the sm90 kernel feeds them to an
// unsigned-A wgmma and removes 128 * qsum[m] from the accumulators (the sm80 kernel here xors).
__host__ __device__ __forceinline__ uint32_t dequant_g128x4_biased(uint32_t q4x4, uint32_t s2, uint32_t zb4) {
  return q4x4 * s2 + zb4;
}
__host__ __device__ __forceinline__ uint32_t dequant_g128x4(uint32_t q4x4, uint32_t s2, uint32_t zb4) {
  return dequant_g128x4_biased(q4x4, s2, zb4) ^ 0x80808080u;
}
// (s2 | zn << 8) word -> s2 and the broadcast biased zero zb4 = (zn + 128) * 0x01010101.
__host__ __device__ __forceinline__ void unpack_s2zn(uint32_t v, uint32_t& s2, uint32_t& zb4) {
  s2 = v & 0xffu;
  zb4 = (((v >> 8) ^ 0x80u) & 0xffu) * 0x01010101u;
}

// The inputs of the epilogue of outputs (m, n..n+7) besides the accumulators: the token's scale and (per-channel)
// activation sum, the 8 channels' scale, scaled zero and bias (zero where absent) and the residual row slice.
struct EpiIn {
  float sxm = 0.0f, xs = 0.0f;
  uint4 sv, zv, bv, rv;
};
__device__ __forceinline__ uint4 epi_residual(const QGemmParams& p, int m, int n) {
  return p.residual ? *reinterpret_cast<const uint4*>(p.residual + size_t(m) * p.n + n) : make_uint4(0, 0, 0, 0);
}
// From global memory.
__device__ __forceinline__ EpiIn epi_in(const QGemmParams& p, int m, int n) {
  const bool per_channel = p.variant == WeightFormat::kW4A8PerChannel;
  EpiIn in;
  in.sxm = __half2float(__ushort_as_half(p.sx[m]));
  in.xs = per_channel ? __half2float(__ushort_as_half(p.xsum[m])) : 0.0f;
  in.sv = *reinterpret_cast<const uint4*>(p.scale + n);
  in.zv = per_channel ? *reinterpret_cast<const uint4*>(p.szero + n) : make_uint4(0, 0, 0, 0);
  in.bv = p.bias ? *reinterpret_cast<const uint4*>(p.bias + n) : make_uint4(0, 0, 0, 0);
  in.rv = epi_residual(p, m, n);
  return in;
}

// Applies the epilogue to 8 consecutive outputs (m, n..n+7) and stores them as FP16 (16 bytes; kSiluMul: the 4
// outputs of their (gate, up) pairs, 8 bytes).
__device__ __forceinline__ void epilogue8(const QGemmParams& p, int m, int n, const int32_t (&a)[8], const EpiIn& in) {
  const __half* s = reinterpret_cast<const __half*>(&in.sv);
  const __half* z = reinterpret_cast<const __half*>(&in.zv);
  const __half* b = reinterpret_cast<const __half*>(&in.bv);
  const __half* r = reinterpret_cast<const __half*>(&in.rv);
  uint4 outv;
  __half* out = reinterpret_cast<__half*>(&outv);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    float v = __fmul_rn(__fmul_rn(float(a[e]), __half2float(s[e])), in.sxm);
    v = __fsub_rn(v, __fmul_rn(__half2float(z[e]), in.xs));
    v = __fadd_rn(v, __half2float(b[e]));
    v = __fadd_rn(v, __half2float(r[e]));
    out[e] = __float2half_rn(v);
  }
  if (p.epilogue == QGemmEpilogue::kSiluMul) {
    // Columns n..n+7 are four (gate, up) pairs: four outputs at y[m, n/2 ..]. The fast exp and divide (a few fp32
    // ulp, so the FP16 result is within one FP16 ulp of the exact one): the epilogue runs after the main loop with
    // nothing to hide it, and the IEEE expf / division doubled its cost (bench_gemm, H200).
    uint2 hv;
    __half* h = reinterpret_cast<__half*>(&hv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float g = __half2float(out[2 * e]), u = __half2float(out[2 * e + 1]);
      h[e] = __float2half_rn(__fdividef(g, 1.0f + __expf(-g)) * u);
    }
    *reinterpret_cast<uint2*>(p.y + size_t(m) * (p.n / 2) + n / 2) = hv;
    return;
  }
  *reinterpret_cast<uint4*>(p.y + size_t(m) * p.n + n) = outv;
}
__device__ __forceinline__ void epilogue8(const QGemmParams& p, int m, int n, const int32_t (&a)[8]) {
  epilogue8(p, m, n, a, epi_in(p, m, n));
}

// Split-K fixup for the block that finished tile (m0, n0) last: sums the gridDim.z INT32 partials
// [splits][m][n] (read through L2) and writes acc_out (debug) or the FP16 epilogue. Threads t0, t0+nthreads, ...
template <int BM, int BN>
__device__ __forceinline__ void splitk_fixup(const QGemmParams& p, const int32_t* partial, int m0, int n0, int t0,
                                             int nthreads) {
  const size_t plane = size_t(p.m) * p.n;
  for (int i = t0; i < BM * BN / 8; i += nthreads) {
    const int r = i / (BN / 8), c8 = (i % (BN / 8)) * 8;
    const int m = m0 + r, n = n0 + c8;
    if (m >= p.m || n >= p.n) continue;
    const size_t o = size_t(m) * p.n + n;
    int32_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int s = 0; s < int(gridDim.z); ++s) {
      const int4 v0 = __ldcg(reinterpret_cast<const int4*>(partial + s * plane + o));
      const int4 v1 = __ldcg(reinterpret_cast<const int4*>(partial + s * plane + o + 4));
      a[0] += v0.x, a[1] += v0.y, a[2] += v0.z, a[3] += v0.w;
      a[4] += v1.x, a[5] += v1.y, a[6] += v1.z, a[7] += v1.w;
    }
    if (p.acc_out) {
      *reinterpret_cast<int4*>(p.acc_out + o) = make_int4(a[0], a[1], a[2], a[3]);
      *reinterpret_cast<int4*>(p.acc_out + o + 4) = make_int4(a[4], a[5], a[6], a[7]);
    } else {
      epilogue8(p, m, n, a);
    }
  }
}

// After every thread of the block wrote its partial and `bar()` synchronized them: counts this block in on the
// tile's `counter` (of `contributors` blocks), and returns true in every thread of the block that completed the
// tile last (which then resets the counter). The caller synchronizes again before a next call reuses the flag.
template <typename Barrier>
__device__ __forceinline__ bool splitk_is_last(int* counter, int contributors, bool leader, Barrier bar) {
  __shared__ int s_last;
  if (leader) {
    __threadfence();
    const int prev = atomicAdd(counter, 1);
    s_last = prev == contributors - 1;
    if (s_last) atomicExch(counter, 0);
  }
  bar();
  const bool last = s_last;
  if (last) __threadfence();
  return last;
}

template <int V, int CONFIG>
__global__ void __launch_bounds__(Cfg<V, CONFIG>::kThreads)
    qgemm_kernel(const QGemmParams p, int tiles_per_split, int32_t* partial, int* counters, int l2_prefetch) {
  using C = Cfg<V, CONFIG>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_n = warp % C::WARPS_N, warp_m = warp / C::WARPS_N;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * C::BN, m0 = blockIdx.y * C::BM;
  const int kgs = p.k / kBK;
  const int kt_begin = blockIdx.z * tiles_per_split;
  const int nk = min(kgs, kt_begin + tiles_per_split) - kt_begin;
  const uint8_t* wg = static_cast<const uint8_t*>(p.w);
  const uint32_t sbase = ptx::smem_addr(smem);

  auto load_stage = [&](int slot, int kt) {
    const uint32_t st = sbase + slot * C::kStageBytes;
    constexpr int kChunksPerTile = C::kTileBytes / 16;
    for (int i = tid; i < C::kWBytes / 16; i += C::kThreads) {
      const int nt = n0 / 16 + i / kChunksPerTile;
      const bool ok = nt < p.n / 16;
      const uint8_t* src = wg + (size_t(ok ? nt : 0) * kgs + kt) * C::kTileBytes + (i % kChunksPerTile) * 16;
      ptx::cp_async16(st + i * 16, src, ok);
    }
    const uint32_t xs = st + C::kWBytes;
    for (int i = tid; i < C::BM * 8; i += C::kThreads) {
      const int r = i >> 3, c = i & 7;
      const bool ok = m0 + r < p.m;
      const int8_t* src = p.x + size_t(ok ? m0 + r : 0) * p.k + kt * kBK + c * 16;
      ptx::cp_async16(xs + r * kBK + ((c ^ (r & 7)) << 4), src, ok);
    }
    if constexpr (C::kG128) {
      const uint32_t ss = xs + C::kXBytes;
      for (int i = tid; i < C::BN / 8; i += C::kThreads) {
        const bool ok = n0 + i * 8 < p.n;
        ptx::cp_async16(ss + i * 16, p.s2zn + size_t(kt) * p.n + (ok ? n0 + i * 8 : 0), ok);
      }
    }
  };

  // PDL (pdl.h; l2_prefetch when the launch has it): the first stages' weight tiles depend on no earlier kernel and
  // are prefetched into L2 before pdl_wait() (one thread per 16-row tile and k tile), while the previous kernel
  // finishes.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  for (int i = tid; l2_prefetch && i < (C::STAGES - 1) * (C::BN / 16); i += C::kThreads) {
    const int s = i / (C::BN / 16), nt = n0 / 16 + i % (C::BN / 16);
    if (s < nk && nt < p.n / 16)
      ptx::bulk_prefetch_l2(wg + (size_t(nt) * kgs + kt_begin + s) * C::kTileBytes, C::kTileBytes);
  }
#endif
  pdl_wait();

  int32_t acc[C::MT][C::NT][4];
#pragma unroll
  for (int i = 0; i < C::MT; ++i)
#pragma unroll
    for (int j = 0; j < C::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < nk) load_stage(s, kt_begin + s);
    ptx::cp_async_commit();
  }

  for (int it = 0; it < nk; ++it) {
    ptx::cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    {
      const int pf = it + C::STAGES - 1;
      if (pf < nk) load_stage(pf % C::STAGES, kt_begin + pf);
      ptx::cp_async_commit();
    }
    const int slot = it % C::STAGES;
    const uint32_t st = sbase + slot * C::kStageBytes;
    const uint32_t ws = st + warp_n * C::MT * C::kTileBytes;
    const uint32_t xs = st + C::kWBytes;

    uint32_t s2v[C::MT][2], zn4[C::MT][2];
    if constexpr (C::kG128) {
      const uint16_t* ss = reinterpret_cast<const uint16_t*>(smem + slot * C::kStageBytes + C::kWBytes + C::kXBytes);
#pragma unroll
      for (int i = 0; i < C::MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t v = ss[warp_n * C::WTN + 16 * i + g + 8 * h];
          unpack_s2zn(v, s2v[i][h], zn4[i][h]);
        }
    }

#pragma unroll
    for (int pp = 0; pp < 2; ++pp) {  // k32 steps 2pp and 2pp+1
      uint32_t a[2][C::MT][4];
#pragma unroll
      for (int i = 0; i < C::MT; ++i) {
        if constexpr (C::kW4) {
          const uint4 v = ptx::lds128(ws + i * C::kTileBytes + (pp * 32 + lane) * 16);
          const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t lo = words[j] & 0x0f0f0f0fu, hi = (words[j] >> 4) & 0x0f0f0f0fu;
            if constexpr (C::kG128) {
              lo = dequant_g128x4(lo, s2v[i][0], zn4[i][0]);
              hi = dequant_g128x4(hi, s2v[i][1], zn4[i][1]);
            }
            a[j / 2][i][2 * (j % 2)] = lo;
            a[j / 2][i][2 * (j % 2) + 1] = hi;
          }
        } else {
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const uint4 v = ptx::lds128(ws + i * C::kTileBytes + ((2 * pp + q) * 32 + lane) * 16);
            a[q][i][0] = v.x;
            a[q][i][1] = v.y;
            a[q][i][2] = v.z;
            a[q][i][3] = v.w;
          }
        }
      }
      uint32_t b[2][C::NT][2];
#pragma unroll
      for (int j = 0; j < C::NT; ++j) {
        const int row = warp_m * C::WTM + 8 * j + (lane & 7);
        const int c = 4 * pp + (lane >> 3);
        uint32_t r[4];
        ptx::ldmatrix_x4(r, xs + row * kBK + ((c ^ (row & 7)) << 4));
        b[0][j][0] = r[0];
        b[0][j][1] = r[1];
        b[1][j][0] = r[2];
        b[1][j][1] = r[3];
      }
#pragma unroll
      for (int q = 0; q < 2; ++q)
#pragma unroll
        for (int i = 0; i < C::MT; ++i)
#pragma unroll
          for (int j = 0; j < C::NT; ++j) ptx::mma_s8_16832(acc[i][j], a[q][i], b[q][j]);
    }
  }

  // Epilogue: stage INT32 accumulators as [token][channel] in shared memory, then 16-byte rows.
  pdl_launch_dependents();  // the MMAs are done (pdl.h)
  ptx::cp_async_wait<0>();
  __syncthreads();
  int32_t* cs = reinterpret_cast<int32_t*>(smem);
#pragma unroll
  for (int i = 0; i < C::MT; ++i)
#pragma unroll
    for (int j = 0; j < C::NT; ++j) {
      const int nr = warp_n * C::WTN + 16 * i + g, tok = warp_m * C::WTM + 8 * j + 2 * t;
      cs[tok * C::kCPitch + nr] = acc[i][j][0];
      cs[(tok + 1) * C::kCPitch + nr] = acc[i][j][1];
      cs[tok * C::kCPitch + nr + 8] = acc[i][j][2];
      cs[(tok + 1) * C::kCPitch + nr + 8] = acc[i][j][3];
    }
  __syncthreads();
  for (int i = tid; i < C::BM * C::BN / 8; i += C::kThreads) {
    const int r = i / (C::BN / 8), c8 = (i % (C::BN / 8)) * 8;
    const int m = m0 + r, n = n0 + c8;
    if (m >= p.m || n >= p.n) continue;
    const int4 v0 = *reinterpret_cast<const int4*>(cs + r * C::kCPitch + c8);
    const int4 v1 = *reinterpret_cast<const int4*>(cs + r * C::kCPitch + c8 + 4);
    if (partial) {
      int4* dst = reinterpret_cast<int4*>(partial + (size_t(blockIdx.z) * p.m + m) * p.n + n);
      dst[0] = v0;
      dst[1] = v1;
    } else {
      const int32_t a8[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
      epilogue8(p, m, n, a8);
    }
  }
  if (gridDim.z > 1) {
    __threadfence();
    __syncthreads();
    if (splitk_is_last(counters + blockIdx.y * gridDim.x + blockIdx.x, int(gridDim.z), tid == 0,
                       [] { __syncthreads(); }))
      splitk_fixup<C::BM, C::BN>(p, partial, m0, n0, tid, C::kThreads);
  }
}

template <int V, int CONFIG>
Status launch_qgemm(const QGemmParams& p, int splits, int tiles_per_split, int32_t* partial, int* counters,
                    cudaStream_t stream) {
  using C = Cfg<V, CONFIG>;
  static std::atomic<uint64_t> attr_set{0};  // per device (device_once.h)
  QS_RETURN_IF_ERROR(once_per_device(attr_set, [] {
    QS_CUDA_RETURN(cudaFuncSetAttribute(qgemm_kernel<V, CONFIG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        C::kSmemBytes));
    return Status::ok();
  }));
  const dim3 grid((p.n + C::BN - 1) / C::BN, (p.m + C::BM - 1) / C::BM, splits);
  QS_CUDA_RETURN(launch_pdl(LaunchShape{grid, dim3(C::kThreads), size_t(C::kSmemBytes), stream},
                            qgemm_kernel<V, CONFIG>, p, tiles_per_split, partial, counters, int(pdl_enabled())));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels::qgemm_detail
