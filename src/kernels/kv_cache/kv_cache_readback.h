// KV4 read-back for the fake-quantized evaluation protocol (model/forward_batch.h quantized_self_kv): after the
// fused RoPE + KV write (kv_cache_write.h) stored a prefill chunk's keys and values in the paged pool, this
// overwrites the chunk's FP16 copies (the prefill attention's "own K/V" inputs) with what the cache holds, i.e.
// dequantize_kv4 of the stored codes (formats.h: (q - float(zero)) * float(scale) in FP32, rounded once to FP16), so
// the prefill attends to every key and value quantized, as the CPU reference does with quantized_self_kv. Launch
// only (no allocation, no sync). KV4 pools only; FP16 pools store exactly the FP16 copies (nothing to do, no launch);
// other pool types return an error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"
#include "kernels/kv_cache/kv_cache_params.h"

namespace qs::kernels {

struct KvReadbackParams {
  KvCacheLayout layout;
  int32_t num_tokens = 0;
  const int32_t* slot_mapping = nullptr;  // [num_tokens] page*page_size + offset; < 0: row left unchanged
  const uint8_t* k_pool = nullptr;        // pools in the kv_cache_params.h layout
  const uint8_t* v_pool = nullptr;
  uint16_t* k_out = nullptr;  // FP16 [num_tokens][num_kv_heads][head_dim]
  uint16_t* v_out = nullptr;  // FP16 [num_tokens][num_kv_heads][head_dim]
};

Status kv_cache_readback(const KvReadbackParams& p, cudaStream_t stream);

}  // namespace qs::kernels
