// Fused RoPE + KV quantization + paged cache write (numerics and layout in kv_cache_params.h): one launch after
// the QKV projection writes roped q (and optionally roped k / v copies for prefill) and stores k and v into their
// pages, KV4 (bit-exact with formats.h quantize_kv4_group), FP16 or FP8 (bit-exact with formats/fp8.h
// quantize_fp8_kv_row).
#pragma once

#include <cuda_runtime.h>

#include "core/status.h"
#include "kernels/kv_cache/kv_cache_params.h"

namespace qs::kernels {

// Launch only; validates the shape (head_dim 64/128, page size multiple of 16, q heads multiple of kv heads).
Status kv_cache_write(const KvWriteParams& p, cudaStream_t stream);

}  // namespace qs::kernels
