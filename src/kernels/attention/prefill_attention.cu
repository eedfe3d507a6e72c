// Causal prefill attention (see prefill_attention.h).
//
// CTA = 4 warps = 64 query rows of one (sequence, query head); grid (ceil(max_q_len/64), heads, batch), longest
// causal blocks scheduled first; Q fragments come straight from global memory into registers. Keys are
// walked in tiles of 64 over the absolute positions [0, prefix + q_len): positions < prefix come from the paged
// cache (FP16 rows by cp.async; KV4 rows dequantized in registers as (q - zero) * scale in fp32, rounded to fp16;
// FP8 rows as e4m3 * scale in fp32, rounded to fp16),
// the rest from the packed k/v by cp.async, double-buffered. Shared-memory rows are D halves with 16-byte chunks
// XOR-swizzled by (row & 7), so ldmatrix (Q, K) and ldmatrix.trans (V) are conflict-free. Each warp: S = Q K^T
// (16 x 64, fp32), causal mask (key position <= prefix + query index), online softmax in the log2 domain, P to
// fp16 A fragments straight from the accumulators, O += P V.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/common/device_once.h"
#include "kernels/attention/attn_ptx.cuh"
#include "kernels/attention/prefill_attention.h"
#include "kernels/common/cuda_check.h"

namespace qs::kernels {
namespace {

using namespace attn;  // NOLINT

constexpr int kBM = 64, kBN = 64, kThreads = 128;

template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {  // half offset of 16-byte chunk `chunk` of row `row`
  return row * D + ((chunk ^ (row & 7)) << 3);
}

template <int D>
struct Smem {
  __half k[2][kBN * D];
  __half v[2][kBN * D];
};

// Stages key rows [n0, n0 + 64) of K and V into buffer `buf`.
template <int D>
__device__ void load_kv_tile(const PrefillParams& p, Smem<D>& sm, int buf, int b, int kvh, int n0, int kv_len,
                             int prefix, int seq_start) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const int32_t* bt = p.block_table + int64_t(b) * p.block_table_stride;
  const KvCacheLayout& L = p.layout;
  for (int u = threadIdx.x; u < kBN * kChunks; u += kThreads) {
    const int r = u / kChunks, c = u % kChunks;
    const int j = n0 + r;
    const uint32_t dk = smem_addr(&sm.k[buf][swz<D>(r, c)]), dv = smem_addr(&sm.v[buf][swz<D>(r, c)]);
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
        *reinterpret_cast<uint4*>(kv ? &sm.v[buf][swz<D>(r, c)] : &sm.k[buf][swz<D>(r, c)]) = o;
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
      *reinterpret_cast<uint4*>(kv ? &sm.v[buf][swz<D>(r, c)] : &sm.k[buf][swz<D>(r, c)]) = o;
    }
  }
}

// 3 CTAs (12 warps) per SM: <= 170 registers (a 40-byte spill at d=128), 64 KiB of shared memory each (d=128);
// measured faster than 2 CTAs with 198 spill-free registers (H100, 190 vs 167 TFLOP/s).
template <int D>
__global__ void __launch_bounds__(kThreads, 3) prefill_kernel(const PrefillParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem<D>& sm = *reinterpret_cast<Smem<D>*>(smem_raw);
  // Longest causal blocks first (the last query block sees the most keys): less tail at the end of the grid.
  const int b = blockIdx.z, h = blockIdx.y, m0 = (gridDim.x - 1 - blockIdx.x) * kBM;
  const int seq_start = p.cu_seqlens[b], q_len = p.cu_seqlens[b + 1] - seq_start;
  if (m0 >= q_len) return;
  const int prefix = p.prefix_lens ? p.prefix_lens[b] : 0;
  const int kvh = h / (p.num_q_heads / p.num_kv_heads);
  const int kv_len = prefix + q_len;
  const int kv_end = min(kv_len, prefix + m0 + kBM);  // last query of this CTA sees keys < kv_end
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;

  load_kv_tile<D>(p, sm, 0, b, kvh, 0, kv_len, prefix, seq_start);
  cp_async_commit();

  // Q A-fragments straight from global memory (read once per CTA): rows g and g+8 of the warp's 16.
  uint32_t qf[D / 16][4];
  {
    const int r0 = m0 + warp * 16 + g;
    const uint32_t* q0 = reinterpret_cast<const uint32_t*>(p.q + ((int64_t(seq_start) + r0) * p.num_q_heads + h) * D);
    const uint32_t* q1 = q0 + int64_t(8) * p.num_q_heads * D / 2;
    const bool ok0 = r0 < q_len, ok1 = r0 + 8 < q_len;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      qf[kc][0] = ok0 ? q0[kc * 8 + t] : 0u;
      qf[kc][1] = ok1 ? q1[kc * 8 + t] : 0u;
      qf[kc][2] = ok0 ? q0[kc * 8 + 4 + t] : 0u;
      qf[kc][3] = ok1 ? q1[kc * 8 + 4 + t] : 0u;
    }
  }
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float sl2 = p.softmax_scale * 1.4426950408889634f;
  const int qpos0 = prefix + m0 + warp * 16 + g;  // absolute position of row g (row g+8: +8)

  const int n_tiles = (kv_end + kBN - 1) / kBN;
  for (int jt = 0; jt < n_tiles; ++jt) {
    const int buf = jt & 1;
    if (jt + 1 < n_tiles) {
      load_kv_tile<D>(p, sm, buf ^ 1, b, kvh, (jt + 1) * kBN, kv_len, prefix, seq_start);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int n0 = jt * kBN;
    if (n0 <= prefix + m0 + warp * 16 + 15) {  // warp-uniform: some key of the tile is visible to the warp
      float s[kBN / 8][4];
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc)
#pragma unroll
        for (int np = 0; np < kBN / 16; ++np) {
          const int i = lane >> 3;
          uint32_t kb[4];
          ldmatrix_x4(kb, smem_addr(&sm.k[buf][swz<D>(np * 16 + (i >> 1) * 8 + (lane & 7), 2 * kc + (i & 1))]));
          mma_f16_16816(s[2 * np], qf[kc], kb[0], kb[1]);
          mma_f16_16816(s[2 * np + 1], qf[kc], kb[2], kb[3]);
        }
      // Masks only where needed: tiles reaching past the warp's first query position or past the keys.
      const bool need_mask = n0 + kBN - 1 > prefix + m0 + warp * 16 || n0 + kBN > kv_len;
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int qpos = qpos0 + 8 * hi;
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = n0 + nt * 8 + 2 * t + e;
            float& v = s[nt][2 * hi + e];
            v = (!need_mask || (j <= qpos && j < kv_len)) ? v * sl2 : -INFINITY;
            mx = fmaxf(mx, v);
          }
        mx = quad_max(mx);
        const float mnew = fmaxf(m[hi], mx);
        const float base = mnew == -INFINITY ? 0.0f : mnew;
        const float corr = exp2f(m[hi] - base);
        m[hi] = mnew;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[nt][2 * hi + e];
            v = exp2f(v - base);
            sum += v;
          }
        l[hi] = l[hi] * corr + sum;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) o[j][2 * hi] *= corr, o[j][2 * hi + 1] *= corr;
      }
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint32_t pa[4] = {pack_h2(s[2 * kk][0], s[2 * kk][1]), pack_h2(s[2 * kk][2], s[2 * kk][3]),
                                pack_h2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack_h2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dc = 0; dc < D / 8; dc += 2) {
          const int i = lane >> 3;
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, smem_addr(&sm.v[buf][swz<D>(kk * 16 + (i & 1) * 8 + (lane & 7), dc + (i >> 1))]));
          mma_f16_16816(o[dc], pa, vb[0], vb[1]);
          mma_f16_16816(o[dc + 1], pa, vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // buffer `buf` is refilled by the next iteration's prefetch
  }
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int i = m0 + warp * 16 + g + 8 * hi;
    const float lsum = quad_sum(l[hi]);
    if (i >= q_len) continue;
    const float inv = 1.0f / lsum;
    __half2* out = reinterpret_cast<__half2*>(p.out + ((int64_t(seq_start) + i) * p.num_q_heads + h) * D);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) out[j * 4 + t] = __floats2half2_rn(o[j][2 * hi] * inv, o[j][2 * hi + 1] * inv);
  }
}

template <int D>
Status launch(const PrefillParams& p, cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0};  // per device (device_once.h)
  const int smem = int(sizeof(Smem<D>));
  QS_RETURN_IF_ERROR(once_per_device(configured, [smem] {
    QS_CUDA_RETURN(cudaFuncSetAttribute(prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return Status::ok();
  }));
  const dim3 grid((p.max_q_len + kBM - 1) / kBM, p.num_q_heads, p.batch);
  prefill_kernel<D><<<grid, kThreads, smem, stream>>>(p);
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
  if (p.batch == 0 || p.max_q_len == 0) return Status::ok();
  return p.head_dim == 128 ? launch<128>(p, stream) : launch<64>(p, stream);
}

}  // namespace qs::kernels
