// Queries of the CUDA device (name, SM count, memory, compute capability) for logs, `qserve version` and plans.
#pragma once

#include <string>

namespace qs::cuda {

struct DeviceInfo {
  bool available = false;
  std::string name;
  int sm_count = 0;
  int major = 0, minor = 0;
  size_t total_memory = 0;
  size_t l2_bytes = 0;
  size_t max_smem_per_block = 0;  // opt-in maximum
};

// Information on the current device; available=false when there is no usable GPU.
DeviceInfo device_info();

}  // namespace qs::cuda
