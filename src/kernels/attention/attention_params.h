// Parameters of the attention kernels (decode over the paged KV cache, causal prefill over packed variable-length
// sequences). Plain C++ so the CPU reference (backends/ref_cpu/attention_kv4) takes the very same structs.
// All FP16 tensors are passed as uint16_t bit patterns; every pointer is device memory for the CUDA kernels and
// host memory for the reference.
#pragma once

#include <cstdint>

#include "kernels/kv_cache/kv_cache_params.h"

namespace qs::kernels {

// Decode: one new query token per sequence attends to its whole context in the paged cache (the current token's
// k/v already written by kv_cache_write). GQA: query head h reads KV head h / (num_q_heads / num_kv_heads).
struct DecodeParams {
  const uint16_t* q = nullptr;  // FP16 [batch][num_q_heads][head_dim], roped
  uint16_t* out = nullptr;      // FP16 [batch][num_q_heads][head_dim]
  const uint8_t* k_pool = nullptr;  // paged cache (kv_cache_params.h), K pool
  const uint8_t* v_pool = nullptr;  // V pool
  KvCacheLayout layout;
  const int32_t* block_table = nullptr;   // [batch][block_table_stride] page ids of each sequence, in order
  int32_t block_table_stride = 0;
  const int32_t* context_lens = nullptr;  // [batch] tokens in the cache per sequence (>= 1)
  int32_t batch = 0;
  int32_t num_q_heads = 0;
  float softmax_scale = 0.0f;  // usually 1/sqrt(head_dim)
};

// Prefill: new tokens of `batch` sequences packed back to back. Query i of sequence b (absolute position
// prefix_lens[b] + i) attends to the sequence's prefix_lens[b] earlier tokens read from the paged cache
// (chunked prefill; KV4 dequantized per formats.h) and to the new tokens j <= i (causal) from k/v.
struct PrefillParams {
  const uint16_t* q = nullptr;    // FP16 [total_tokens][num_q_heads][head_dim], roped
  const uint16_t* k = nullptr;    // FP16 [total_tokens][num_kv_heads][head_dim], roped (kv_cache_write k_out)
  const uint16_t* v = nullptr;    // FP16 [total_tokens][num_kv_heads][head_dim]
  uint16_t* out = nullptr;        // FP16 [total_tokens][num_q_heads][head_dim]
  const int32_t* cu_seqlens = nullptr;  // [batch + 1] offsets of each sequence's new tokens; cu_seqlens[0] = 0
  int32_t batch = 0;
  int32_t max_q_len = 0;  // max over b of cu_seqlens[b+1] - cu_seqlens[b] (sizes the grid)
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 128;
  float softmax_scale = 0.0f;
  // Earlier context (optional: prefix_lens == nullptr means none).
  const int32_t* prefix_lens = nullptr;  // [batch] tokens of each sequence already in the cache
  const uint8_t* k_pool = nullptr;
  const uint8_t* v_pool = nullptr;
  KvCacheLayout layout;  // layout.num_kv_heads/head_dim must match the above when prefix_lens is set
  const int32_t* block_table = nullptr;  // [batch][block_table_stride]
  int32_t block_table_stride = 0;
};

}  // namespace qs::kernels
