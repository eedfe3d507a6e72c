// CPU references of the KV-cache and attention kernels (kernels/kv_cache, kernels/attention): the fused RoPE +
// KV4/FP16 quantize + paged write, decode attention over the paged cache, and causal prefill attention over packed
// sequences with earlier context from the cache. Cache dtypes KV4, FP16 and FP8 (e4m3 per token per head with an
// FP16 scale, formats/fp8.h quantize_fp8_kv_row; read back as e4m3 * float(scale), exact in fp32). They take the kernels' own parameter structs with host pointers.
// Plain loops; the write is bit-exact with the kernel (numerics in kv_cache_params.h); attention accumulates in
// double from the dequantized cache (formats.h dequantize_kv4) and writes fp32 outputs (not fp16) so tests can
// measure the kernel's own rounding.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention/attention_params.h"
#include "kernels/kv_cache/kv_cache_params.h"

namespace qs::ref_cpu {

// Rotate-half RoPE of one head vector (fp32), bit-exact with the kernel (kv_cache_params.h).
void rope_rotate_half(const float* x, float* out, int head_dim, int32_t pos, const float* inv_freq);

// kernels::kv_cache_write on the host.
void kv_cache_write(const kernels::KvWriteParams& p);

// Reads token `tok` of a sequence (its block-table row `pages`) for `kv_head` from a pool, dequantized to fp32
// (KV4: formats.h dequantize_kv4; FP16: exact; FP8: e4m3 * scale). `out` has head_dim values.
void read_cache_token(const uint8_t* pool, const kernels::KvCacheLayout& layout, const int32_t* pages, int32_t tok,
                      int32_t kv_head, float* out);

// Decode attention; out: fp32 [batch][num_q_heads][head_dim] (p.out is ignored).
void decode_attention(const kernels::DecodeParams& p, float* out);

// Causal prefill attention; out: fp32 [total_tokens][num_q_heads][head_dim] (p.out is ignored).
void prefill_attention(const kernels::PrefillParams& p, float* out);

}  // namespace qs::ref_cpu
