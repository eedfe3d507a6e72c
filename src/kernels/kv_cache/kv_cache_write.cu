// Fused RoPE + KV4/FP16 quantization + paged write (see kv_cache_write.h). One CTA of 4 warps per token: the
// token's cos/sin table goes to shared memory (double-precision sincos rounded to fp32, like the reference), then
// each warp takes whole heads. A lane holds dims [lane*P, lane*P+P) of each half (P = D/64), so the rotate-half
// partners sit in the same lane. KV4: warp min/max, then formats.h's quantizer with IEEE fp32 operations written
// out (__fdiv_rn, __fadd_rn, __float2int_rn: no contraction, no fast-math), which makes it bit-exact. FP8: warp
// amax, FP16 scale = fp16(amax / 448), e4m3 = cvt.rn.satfinite(x / scale) (formats/fp8.h quantize_fp8_kv_row).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"
#include "kernels/kv_cache/kv_cache_write.h"

namespace qs::kernels {
namespace {

constexpr int kWarps = 4;

template <int D>
__global__ void __launch_bounds__(kWarps * 32) kv_write_kernel(const KvWriteParams p) {
  constexpr int P = D / 64;  // values per lane per half
  __shared__ float cs[D / 2], sn[D / 2];
  pdl_wait();  // launched by launch_pdl (pdl.h)
  const int tok = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t pos = p.positions[tok];
  for (int i = threadIdx.x; i < D / 2; i += blockDim.x) {
    const float angle = __fmul_rn(float(pos), p.inv_freq[i]);
    double s, c;
    sincos(double(angle), &s, &c);
    cs[i] = float(c);
    sn[i] = float(s);
  }
  __syncthreads();
  const KvCacheLayout& L = p.layout;
  const int hq = p.num_q_heads, hkv = L.num_kv_heads;
  const int32_t slot = p.slot_mapping[tok];
  const __half* row = reinterpret_cast<const __half*>(p.qkv) + int64_t(tok) * p.qkv_stride;
  for (int h = warp; h < hq + 2 * hkv; h += kWarps) {
    float lo[P], hi[P];
#pragma unroll
    for (int e = 0; e < P; ++e) {
      lo[e] = __half2float(row[h * D + lane * P + e]);
      hi[e] = __half2float(row[h * D + D / 2 + lane * P + e]);
    }
    if (h < hq + hkv) {  // RoPE for q and k
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const int i = lane * P + e;
        const float a = __fsub_rn(__fmul_rn(lo[e], cs[i]), __fmul_rn(hi[e], sn[i]));
        const float b = __fadd_rn(__fmul_rn(hi[e], cs[i]), __fmul_rn(lo[e], sn[i]));
        lo[e] = a;
        hi[e] = b;
      }
    }
    __half* dst = nullptr;
    int64_t dst_row = 0;
    if (h < hq) {
      dst = reinterpret_cast<__half*>(p.q_out);
      dst_row = int64_t(tok) * hq + h;
    } else {
      const bool is_k = h < hq + hkv;
      dst = reinterpret_cast<__half*>(is_k ? p.k_out : p.v_out);
      dst_row = int64_t(tok) * hkv + (is_k ? h - hq : h - hq - hkv);
    }
    if (dst) {
#pragma unroll
      for (int e = 0; e < P; ++e) {
        dst[dst_row * D + lane * P + e] = __float2half_rn(lo[e]);
        dst[dst_row * D + D / 2 + lane * P + e] = __float2half_rn(hi[e]);
      }
    }
    if (h < hq || slot < 0) continue;
    const bool is_k = h < hq + hkv;
    const int kvh = is_k ? h - hq : h - hq - hkv;
    uint8_t* blk = (is_k ? p.k_pool : p.v_pool) + L.block_offset(slot / L.page_size, kvh);
    const int off = slot % L.page_size;
    if (L.dtype == KvDType::kFp16) {
      __half* d = reinterpret_cast<__half*>(blk + L.data_offset(off));
#pragma unroll
      for (int e = 0; e < P; ++e) {
        d[lane * P + e] = __float2half_rn(lo[e]);
        d[D / 2 + lane * P + e] = __float2half_rn(hi[e]);
      }
      continue;
    }
    if (L.dtype == KvDType::kFp8) {
      float amax = 0.0f;
#pragma unroll
      for (int e = 0; e < P; ++e) amax = fmaxf(amax, fmaxf(fabsf(lo[e]), fabsf(hi[e])));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const __half s_h = __float2half_rn(__fdiv_rn(amax, 448.0f));
      const float sr = __half2float(s_h);
      auto q8 = [&](float x) {
        return sr > 0.0f ? uint8_t(__nv_cvt_float_to_fp8(__fdiv_rn(x, sr), __NV_SATFINITE, __NV_E4M3)) : uint8_t(0);
      };
      uint8_t* data = blk + L.data_offset(off);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        data[lane * P + e] = q8(lo[e]);
        data[D / 2 + lane * P + e] = q8(hi[e]);
      }
      if (lane == 0) *reinterpret_cast<__half*>(blk + L.scale_offset(off)) = s_h;
      continue;
    }
    float mn = fminf(lo[0], hi[0]), mx = fmaxf(lo[0], hi[0]);
#pragma unroll
    for (int e = 1; e < P; ++e) {
      mn = fminf(mn, fminf(lo[e], hi[e]));
      mx = fmaxf(mx, fmaxf(lo[e], hi[e]));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    float s = __fdiv_rn(__fsub_rn(mx, mn), 15.0f);
    s = fmaxf(s, __fdiv_rn(fmaxf(fabsf(mn), fabsf(mx)), 32768.0f));
    s = fmaxf(s, 6.103515625e-05f);
    const __half s_h = __float2half_rn(s);
    const float sr = __half2float(s_h);
    const __half z_h = __float2half_rn(__fdiv_rn(-mn, sr));
    const float zr = __half2float(z_h);
    auto quant = [&](float x) {
      return uint32_t(min(max(__float2int_rn(__fadd_rn(__fdiv_rn(x, sr), zr)), 0), 15));
    };
    uint8_t* data = blk + L.data_offset(off);
    if constexpr (P == 2) {  // lane has dims 2l, 2l+1 (byte l) and D/2+2l, +1 (byte D/4+l)
      data[lane] = uint8_t(quant(lo[0]) | (quant(lo[1]) << 4));
      data[D / 4 + lane] = uint8_t(quant(hi[0]) | (quant(hi[1]) << 4));
    } else {  // P == 1: lane has dims l and D/2+l; even lanes pair with their odd neighbour
      const uint32_t ql = quant(lo[0]), qh = quant(hi[0]);
      const uint32_t nl = __shfl_down_sync(0xffffffffu, ql, 1), nh = __shfl_down_sync(0xffffffffu, qh, 1);
      if ((lane & 1) == 0) {
        data[lane / 2] = uint8_t(ql | (nl << 4));
        data[D / 4 + lane / 2] = uint8_t(qh | (nh << 4));
      }
    }
    if (lane == 0) {
      *reinterpret_cast<__half*>(blk + L.scale_offset(off)) = s_h;
      *reinterpret_cast<__half*>(blk + L.zero_offset(off)) = z_h;
    }
  }
}

}  // namespace

Status kv_cache_write(const KvWriteParams& p, cudaStream_t stream) {
  const KvCacheLayout& L = p.layout;
  if (L.head_dim != 64 && L.head_dim != 128)
    return Status::error("kv_cache_write: head_dim must be 64 or 128, got " + std::to_string(L.head_dim));
  if (L.page_size <= 0 || L.page_size % 16 != 0)
    return Status::error("kv_cache_write: page_size must be a positive multiple of 16, got " +
                         std::to_string(L.page_size));
  if (L.num_kv_heads <= 0 || p.num_q_heads % L.num_kv_heads != 0)
    return Status::error("kv_cache_write: num_q_heads must be a multiple of num_kv_heads");
  if (p.qkv_stride < int64_t(p.num_q_heads + 2 * L.num_kv_heads) * L.head_dim)
    return Status::error("kv_cache_write: qkv_stride too small");
  if (L.dtype != KvDType::kKv4 && L.dtype != KvDType::kFp16 && L.dtype != KvDType::kFp8)
    return Status::error(std::string("kv_cache_write: cache dtype ") + kv_dtype_name(L.dtype) +
                         " not supported (kv4, fp16, fp8)");
  if (p.num_tokens == 0) return Status::ok();
  const LaunchShape shape{dim3(unsigned(p.num_tokens)), dim3(kWarps * 32), 0, stream};
  if (L.head_dim == 128) QS_CUDA_RETURN(launch_pdl(shape, kv_write_kernel<128>, p));
  else QS_CUDA_RETURN(launch_pdl(shape, kv_write_kernel<64>, p));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
