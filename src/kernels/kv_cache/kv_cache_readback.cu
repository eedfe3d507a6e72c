// KV4 read-back into the prefill's FP16 K/V copies (contract in kv_cache_readback.h). Grid (token, KV head, K|V);
// one thread per packed byte (two elements).
#include <cuda_fp16.h>

#include "kernels/common/cuda_check.h"
#include "kernels/kv_cache/kv_cache_readback.h"

namespace qs::kernels {
namespace {

__global__ void readback_kv4(KvReadbackParams p) {
  const int32_t t = blockIdx.x, h = blockIdx.y;
  const int32_t slot = p.slot_mapping[t];
  if (slot < 0) return;
  const KvCacheLayout& L = p.layout;
  const uint8_t* pool = blockIdx.z == 0 ? p.k_pool : p.v_pool;
  uint16_t* out = (blockIdx.z == 0 ? p.k_out : p.v_out) + (int64_t(t) * L.num_kv_heads + h) * L.head_dim;
  const int32_t tok = slot % L.page_size;
  const uint8_t* block = pool + L.block_offset(slot / L.page_size, h);
  const float scale = __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(block + L.scale_offset(tok))));
  const float zero = __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(block + L.zero_offset(tok))));
  const uint8_t* codes = block + L.data_offset(tok);
  for (int32_t j = threadIdx.x; j < L.head_dim / 2; j += blockDim.x) {
    const uint8_t b = codes[j];  // element 2j in the low nibble (formats.h canonical order)
    out[2 * j] = __half_as_ushort(__float2half_rn(__fmul_rn(float(b & 15) - zero, scale)));
    out[2 * j + 1] = __half_as_ushort(__float2half_rn(__fmul_rn(float(b >> 4) - zero, scale)));
  }
}

}  // namespace

Status kv_cache_readback(const KvReadbackParams& p, cudaStream_t stream) {
  if (p.num_tokens < 0) return Status::error("kv_cache_readback: num_tokens must be >= 0");
  if (p.layout.dtype == KvDType::kFp16 || p.num_tokens == 0) return Status::ok();
  if (p.layout.dtype != KvDType::kKv4)
    return Status::error(std::string("kv_cache_readback: only KV4 (or FP16) pools, got ") +
                         kv_dtype_name(p.layout.dtype));
  if (!p.slot_mapping || !p.k_pool || !p.v_pool || !p.k_out || !p.v_out)
    return Status::error("kv_cache_readback: a pointer is missing");
  if (p.layout.head_dim % 2 != 0 || p.layout.num_kv_heads < 1 || p.layout.page_size < 1)
    return Status::error("kv_cache_readback: bad layout");
  const dim3 grid(uint32_t(p.num_tokens), uint32_t(p.layout.num_kv_heads), 2);
  readback_kv4<<<grid, 64, 0, stream>>>(p);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
