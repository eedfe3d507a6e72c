// Device-buffer helpers for the GPU tests of the attention / KV-cache / quantization kernels: an owning device
// array with upload/download, poisoning and a non-finite count (kernels/common/guards.h).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/common/cuda_check.h"
#include "kernels/common/guards.h"
#include "common/test_util.h"

namespace qs::test {

template <typename T>
class DevBuf {
 public:
  explicit DevBuf(size_t n) : n_(n) { QS_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T))); }
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) { upload(h); }
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& h) {
    QS_CHECK(h.size() == n_) << "upload size mismatch";
    QS_CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    QS_CUDA_CHECK(cudaDeviceSynchronize());
    QS_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void fill_bytes(int v) { QS_CUDA_CHECK(cudaMemset(p_, v, n_ * sizeof(T))); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Poisons an FP16 buffer with NaN (what an unwritten output keeps).
inline void poison(DevBuf<uint16_t>& b) { ASSERT_TRUE(kernels::poison_f16(b.get(), int64_t(b.size()), 0).is_ok()); }

// Number of NaN/inf (incl. still-poisoned) FP16 elements.
inline int nonfinite(const DevBuf<uint16_t>& b) {
  DevBuf<int> c(1);
  EXPECT_TRUE(kernels::count_nonfinite_f16(b.get(), int64_t(b.size()), c.get(), 0).is_ok());
  return c.download()[0];
}

}  // namespace qs::test
