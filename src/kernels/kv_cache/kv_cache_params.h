// Paged KV cache layout and the parameters of the fused RoPE + KV-quantize + paged-write step. Plain C++ (no CUDA
// headers) so that the CPU reference (backends/ref_cpu/attention_kv4) and the CUDA kernels share one definition.
//
// Layout (QSERVE.md section 3). K and V live in two separate pools of identical shape. A pool is an array of
// pages; a page holds `page_size` consecutive tokens of one sequence for every KV head; inside a page, one block
// per KV head:
//   KV4 block:  packed 4-bit data [page_size][head_dim/2] (element 2j low nibble, formats.h canonical order),
//               then FP16 scales [page_size], then FP16 zeros [page_size]   (formats.h quantize_kv4_group)
//   FP16 block: FP16 data [page_size][head_dim]
//   FP8 block:  e4m3 data [page_size][head_dim], then FP16 scales [page_size], then [page_size] unused FP16
//   FP32 block: FP32 data [page_size][head_dim] (host reference pool only)
// A token's cache slot is page * page_size + offset; a sequence's pages are listed in its block-table row.
// page_size must be a multiple of 16 (kernels process tiles of 16 tokens that never straddle a page); head_dim
// 64 or 128.
#pragma once

#include <cstdint>

#include "formats/kinds.h"

#if defined(__CUDACC__)
#define QS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QS_HOST_DEVICE inline
#endif

namespace qs::kernels {

struct KvCacheLayout {
  int32_t page_size = 64;    // tokens per page (multiple of 16)
  int32_t num_kv_heads = 0;  // KV heads stored per page
  int32_t head_dim = 128;    // 64 or 128
  KvDType dtype = KvDType::kKv4;  // qs::KvDType; the kernels take kKv4, kFp16, kFp8 (kFp32: host reference only)

  // Bytes of one (page, KV head) block and of one page.
  QS_HOST_DEVICE int64_t block_bytes() const {
    switch (dtype) {
      case KvDType::kKv4: return int64_t(page_size) * (head_dim / 2 + 4);
      case KvDType::kFp8: return int64_t(page_size) * (head_dim + 4);  // e4m3 data, then FP16 scale, FP16 pad
      case KvDType::kFp32: return int64_t(page_size) * head_dim * 4;
      default: return int64_t(page_size) * head_dim * 2;
    }
  }
  QS_HOST_DEVICE int64_t page_bytes() const { return block_bytes() * num_kv_heads; }
  QS_HOST_DEVICE int64_t block_offset(int64_t page, int32_t kv_head) const {
    return page * page_bytes() + int64_t(kv_head) * block_bytes();
  }
  // Offsets inside a block. KV4: data row of a token, its scale and its zero. FP16: the token's data row.
  QS_HOST_DEVICE int64_t data_offset(int32_t tok) const {
    switch (dtype) {
      case KvDType::kKv4: return int64_t(tok) * (head_dim / 2);
      case KvDType::kFp8: return int64_t(tok) * head_dim;
      case KvDType::kFp32: return int64_t(tok) * head_dim * 4;
      default: return int64_t(tok) * head_dim * 2;
    }
  }
  // KV4 and FP8 blocks end with FP16 scales [page_size] then FP16 zeros [page_size] (unused by FP8).
  QS_HOST_DEVICE int64_t code_bytes() const { return dtype == KvDType::kKv4 ? head_dim / 2 : head_dim; }
  QS_HOST_DEVICE int64_t scale_offset(int32_t tok) const { return int64_t(page_size) * code_bytes() + 2 * tok; }
  QS_HOST_DEVICE int64_t zero_offset(int32_t tok) const {
    return int64_t(page_size) * (code_bytes() + 2) + 2 * tok;
  }
};

// Fused step after the QKV projection: RoPE (rotate-half) on q and k, then k and v written into their pages
// (KV4: quantized per token per KV head after RoPE; FP16: stored; FP8: e4m3 per token per KV head with an FP16
// scale = fp16(amax / 448), dividing by the stored scale, formats/fp8.h quantize_fp8_kv_row). Numerics (bit-identical CPU and GPU):
//   angle = float(pos) * inv_freq[i] (fp32);  c, s = float(cos(double(angle))), float(sin(double(angle)))
//   out[i] = x[i]*c - x[i+D/2]*s;  out[i+D/2] = x[i+D/2]*c + x[i]*s   (fp32, each product rounded, no FMA)
//   KV4 quantizes the fp32 roped k (not its fp16 rounding) and v with formats.h quantize_kv4_group; FP8 likewise
//   with formats/fp8.h quantize_fp8_kv_row.
struct KvWriteParams {
  const uint16_t* qkv = nullptr;  // FP16 [num_tokens][qkv_stride]: num_q_heads q heads, then num_kv_heads k
                                  // heads, then num_kv_heads v heads, head_dim values each (QKV GEMM output)
  int64_t qkv_stride = 0;         // elements between rows of qkv (>= (num_q_heads + 2*num_kv_heads)*head_dim)
  int32_t num_tokens = 0;
  int32_t num_q_heads = 0;
  KvCacheLayout layout;              // num_kv_heads, head_dim, page size and cache dtype
  const int32_t* positions = nullptr;     // [num_tokens] RoPE position of each token
  const int32_t* slot_mapping = nullptr;  // [num_tokens] page*page_size + offset; < 0: token not cached
  const float* inv_freq = nullptr;        // [head_dim/2] RoPE inverse frequencies (scaling already applied)
  uint16_t* q_out = nullptr;  // FP16 [num_tokens][num_q_heads][head_dim]: roped q (required)
  uint16_t* k_out = nullptr;  // FP16 [num_tokens][num_kv_heads][head_dim]: roped k, optional (prefill input)
  uint16_t* v_out = nullptr;  // FP16 [num_tokens][num_kv_heads][head_dim]: v copy, optional (prefill input)
  uint8_t* k_pool = nullptr;  // K pool: [num_pages][page_bytes] (layout above)
  uint8_t* v_pool = nullptr;  // V pool: same shape
};

}  // namespace qs::kernels
