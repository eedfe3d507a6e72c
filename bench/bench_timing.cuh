// Timing shared by the kernel benchmarks (bench/*.cu): a byte buffer over the one RAII DeviceBuffer, and the
// median time of a launch over repetitions with CUDA events, each after rewriting a 256 MiB buffer so L2 starts
// cold (pass nullptr for warm-L2 timing), after 3 warm-up launches.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/common/cuda_check.h"
#include "kernels/common/device_buffer.h"

namespace qs::bench {

// An untyped device buffer (at least 16 bytes) with typed views.
struct Dev {
  DeviceBuffer<uint8_t> buf;
  void* p = nullptr;
  explicit Dev(size_t n) : buf(std::max<size_t>(n, 16)), p(buf.get()) {}
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
};

constexpr size_t kL2FlushBytes = size_t(256) << 20;

// Median milliseconds of fn() over `reps` launches; `flush` (kL2FlushBytes of device memory or nullptr) is
// rewritten before each launch.
template <typename Fn>
float median_ms(Fn fn, int reps, void* flush) {
  cudaEvent_t a, b;
  QS_CUDA_CHECK(cudaEventCreate(&a));
  QS_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    if (flush) QS_CUDA_CHECK(cudaMemsetAsync(flush, i, kL2FlushBytes));
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    QS_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace qs::bench
