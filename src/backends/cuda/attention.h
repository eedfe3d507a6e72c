// CUDA binding of the KV-cache and attention kernels for the engine: device memory of the paged KV cache of every
// layer (layout in kernels/kv_cache/kv_cache_params.h) and a decode-attention runner that owns its split plan and
// workspace. Host side only: plan() may allocate (when the workspace must grow), run() only launches (no
// allocation, no sync; capturable in a CUDA graph). Block tables, context lengths, q and outputs are device
// pointers owned by the caller (the runtime's KV block manager hands out the page ids).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"
#include "kernels/attention/decode_attention.h"
#include "kernels/attention/prefill_attention.h"
#include "kernels/kv_cache/kv_cache_write.h"

namespace qs::cuda {

// K and V pools of `num_pages` pages for each of `num_layers` layers, in one allocation (move-only).
class PagedKvCache {
 public:
  PagedKvCache() = default;
  // Allocates num_layers * num_pages * layout.page_bytes() bytes for K and as many for V (throws qs::Error on a bad
  // layout or a CUDA failure). The memory is not cleared: a page holds garbage until tokens are written to it.
  PagedKvCache(int num_layers, int64_t num_pages, const kernels::KvCacheLayout& layout);
  PagedKvCache(PagedKvCache&& o) noexcept { *this = static_cast<PagedKvCache&&>(o); }
  PagedKvCache& operator=(PagedKvCache&& o) noexcept;
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;
  ~PagedKvCache();

  // Pages needed for `tokens` tokens per sequence-layer, and the bytes one page costs over all layers (K + V).
  static int64_t pages_for(int64_t tokens, int page_size) { return (tokens + page_size - 1) / page_size; }
  int64_t bytes_per_page_all_layers() const { return 2 * num_layers_ * layout_.page_bytes(); }

  uint8_t* k_pool(int layer) const { return mem_ + int64_t(layer) * layer_bytes(); }
  uint8_t* v_pool(int layer) const { return mem_ + (num_layers_ + int64_t(layer)) * layer_bytes(); }
  const kernels::KvCacheLayout& layout() const { return layout_; }
  int num_layers() const { return num_layers_; }
  int64_t num_pages() const { return num_pages_; }

 private:
  int64_t layer_bytes() const { return num_pages_ * layout_.page_bytes(); }
  uint8_t* mem_ = nullptr;
  int num_layers_ = 0;
  int64_t num_pages_ = 0;
  kernels::KvCacheLayout layout_;
};

// Decode attention with a cached plan and its workspace.
class DecodeAttention {
 public:
  // num_sms <= 0: the current device's SM count.
  explicit DecodeAttention(int num_sms = 0);
  DecodeAttention(const DecodeAttention&) = delete;
  DecodeAttention& operator=(const DecodeAttention&) = delete;
  ~DecodeAttention();

  // Host: plans for this batch shape (max_context = the longest context in the batch) and grows the workspace if
  // needed. Throws qs::Error on an unsupported shape or a CUDA allocation failure.
  const kernels::DecodePlan& plan(int32_t batch, int32_t num_q_heads, const kernels::KvCacheLayout& layout,
                                  int32_t max_context);
  // Launch only, with the last plan (p.batch, heads and layout must be those it was made for).
  Status run(const kernels::DecodeParams& p, cudaStream_t stream) const;

 private:
  int num_sms_ = 0;
  kernels::DecodePlan plan_;
  int32_t planned_batch_ = -1, planned_heads_ = -1;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace qs::cuda
