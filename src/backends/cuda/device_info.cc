// CUDA device queries (see device_info.h).
#include "backends/cuda/device_info.h"

#include <cuda_runtime.h>

namespace qs::cuda {

DeviceInfo device_info() {
  DeviceInfo info;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return info;
  }
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) return info;
  info.available = true;
  info.name = p.name;
  info.sm_count = p.multiProcessorCount;
  info.major = p.major;
  info.minor = p.minor;
  info.total_memory = p.totalGlobalMem;
  info.l2_bytes = size_t(p.l2CacheSize);
  info.max_smem_per_block = p.sharedMemPerBlockOptin;
  return info;
}

}  // namespace qs::cuda
