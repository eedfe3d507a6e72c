// DeviceBuffer<T>: the one RAII owner of a device allocation (cudaMalloc / cudaFree), move-only, for host code
// that sets up kernels: the engine, the CUDA bindings, GPU tests and benchmarks. A buffer of 0 elements holds no
// allocation and get() is nullptr (kernels read "absent" from a null pointer, e.g. no bias). Allocation failures
// throw qs::Error naming the size; copies are synchronous (setup and tests, never the hot path).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "kernels/common/cuda_check.h"

namespace qs {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : n_(count) {
    if (n_ == 0) return;
    const cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T));
    QS_CHECK(e == cudaSuccess) << "cudaMalloc of " << n_ * sizeof(T) << " bytes: " << cudaGetErrorString(e);
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

  void upload(const std::vector<T>& host) {
    QS_CHECK(host.size() == n_) << "DeviceBuffer upload of " << host.size() << " elements into " << n_;
    if (n_) QS_CUDA_CHECK(cudaMemcpy(p_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  // Waits for the device, then copies everything back.
  std::vector<T> download() const {
    std::vector<T> host(n_);
    QS_CUDA_CHECK(cudaDeviceSynchronize());
    if (n_) QS_CUDA_CHECK(cudaMemcpy(host.data(), p_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
  void fill_bytes(int value) {
    if (n_) QS_CUDA_CHECK(cudaMemset(p_, value, bytes()));
  }

 private:
  void release() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace qs
