// CUDA binding of the KV cache and decode attention (see attention.h).
#include "backends/cuda/attention.h"

#include "core/error.h"
#include "kernels/common/cuda_check.h"

namespace qs::cuda {

PagedKvCache::PagedKvCache(int num_layers, int64_t num_pages, const kernels::KvCacheLayout& layout)
    : num_layers_(num_layers), num_pages_(num_pages), layout_(layout) {
  QS_CHECK(num_layers > 0 && num_pages > 0) << "PagedKvCache: need layers and pages, got " << num_layers << " x "
                                            << num_pages;
  QS_CHECK(layout.page_size > 0 && layout.page_size % 16 == 0)
      << "PagedKvCache: page_size must be a positive multiple of 16, got " << layout.page_size;
  QS_CHECK(layout.head_dim == 64 || layout.head_dim == 128)
      << "PagedKvCache: head_dim must be 64 or 128, got " << layout.head_dim;
  QS_CHECK(layout.num_kv_heads > 0) << "PagedKvCache: num_kv_heads must be positive";
  void* p = nullptr;
  QS_CUDA_CHECK(cudaMalloc(&p, size_t(2 * num_layers_ * layer_bytes())));
  mem_ = static_cast<uint8_t*>(p);
}

PagedKvCache& PagedKvCache::operator=(PagedKvCache&& o) noexcept {
  if (this != &o) {
    if (mem_) cudaFree(mem_);
    mem_ = o.mem_;
    num_layers_ = o.num_layers_;
    num_pages_ = o.num_pages_;
    layout_ = o.layout_;
    o.mem_ = nullptr;
    o.num_layers_ = 0;
    o.num_pages_ = 0;
  }
  return *this;
}

PagedKvCache::~PagedKvCache() {
  if (mem_) cudaFree(mem_);
}

DecodeAttention::DecodeAttention(int num_sms) : num_sms_(num_sms) {
  if (num_sms_ <= 0) {
    int dev = 0;
    QS_CUDA_CHECK(cudaGetDevice(&dev));
    QS_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, dev));
  }
}

DecodeAttention::~DecodeAttention() {
  if (workspace_) cudaFree(workspace_);
}

const kernels::DecodePlan& DecodeAttention::plan(int32_t batch, int32_t num_q_heads,
                                                 const kernels::KvCacheLayout& layout, int32_t max_context) {
  plan_ = kernels::plan_decode(batch, num_q_heads, layout, max_context, num_sms_);
  planned_batch_ = batch;
  planned_heads_ = num_q_heads;
  if (plan_.workspace_bytes > workspace_bytes_) {
    if (workspace_) QS_CUDA_CHECK(cudaFree(workspace_));
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    QS_CUDA_CHECK(cudaMalloc(&workspace_, plan_.workspace_bytes));
    workspace_bytes_ = plan_.workspace_bytes;
  }
  return plan_;
}

Status DecodeAttention::run(const kernels::DecodeParams& p, cudaStream_t stream) const {
  if (planned_batch_ != p.batch || planned_heads_ != p.num_q_heads)
    return Status::error("DecodeAttention::run: batch/heads differ from the last plan (call plan first)");
  return kernels::run_decode(p, plan_, workspace_, stream);
}

}  // namespace qs::cuda
