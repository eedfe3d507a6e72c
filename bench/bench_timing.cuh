// Timing shared by the kernel benchmarks (bench/*.cu): a byte buffer over the one RAII DeviceBuffer, and the
// median time of a launch over repetitions with CUDA events, after 3 warm-up launches, each timed launch starting
// with a cold L2 (pass nullptr for warm-L2 timing). Two ways to make L2 cold, chosen by set_flush():
//  - Flush::kClean (default): a read pass over a 256 MiB buffer. L2 then holds clean lines of that buffer only,
//    as in a serving step, where the kernel before attention or a fused op read weights and wrote a few MB.
//  - Flush::kDirty (the method before 2026-12-01): a 256 MiB memset. L2 (50 MB on H100/H200) is then full of dirty
//    lines that the timed kernel must write back to DRAM as it evicts them: up to 50 MB of write traffic charged
//    to the kernel, which is most of the time of a kernel that reads 20-100 MB.
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

enum class Flush { kClean, kDirty };
inline Flush& flush_mode() {
  static Flush mode = Flush::kClean;
  return mode;
}
inline void set_flush(Flush f) { flush_mode() = f; }
inline const char* flush_name() { return flush_mode() == Flush::kClean ? "clean (read pass)" : "dirty (memset)"; }

// Reads n 16-byte words. The xor is stored only if it equals an arbitrary constant: the compiler cannot drop the
// loads, and the pass writes (almost surely) nothing.
__global__ void l2_read_pass(const uint4* p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// Makes L2 cold before a timed launch (flush: kL2FlushBytes of device memory).
inline void flush_l2(void* flush, int i) {
  if (flush_mode() == Flush::kDirty) {
    QS_CUDA_CHECK(cudaMemsetAsync(flush, i, kL2FlushBytes));
    return;
  }
  // The last 16 bytes are the sink (never written in practice).
  auto* base = static_cast<uint8_t*>(flush);
  l2_read_pass<<<1024, 256>>>(reinterpret_cast<const uint4*>(base), int64_t(kL2FlushBytes / 16) - 1,
                              reinterpret_cast<uint32_t*>(base + kL2FlushBytes - 16));
  QS_CUDA_CHECK(cudaGetLastError());
}

// Median milliseconds of fn() over `reps` launches; with `flush` (kL2FlushBytes of device memory, or nullptr for a
// warm L2) L2 is made cold before each launch (flush_l2).
template <typename Fn>
float median_ms(Fn fn, int reps, void* flush) {
  cudaEvent_t a, b;
  QS_CUDA_CHECK(cudaEventCreate(&a));
  QS_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    if (flush) flush_l2(flush, i);
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
