// Per-device "done once" flags for host-side kernel setup. Raising a kernel's dynamic shared-memory limit
// (cudaFuncSetAttribute) is a per-device setting: a process-wide `static bool` would skip it on the second GPU a
// process uses. One bit per device ordinal (ordinals >= 64 simply redo the setup every time).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace qs::kernels {

// Runs setup() (returning Status) unless it already succeeded on the current device for this flag set.
template <typename F>
Status once_per_device(std::atomic<uint64_t>& flags, F&& setup) {
  int dev = 0;
  const cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return Status::error(std::string("cudaGetDevice: ") + cudaGetErrorString(e));
  const uint64_t bit = dev >= 0 && dev < 64 ? (uint64_t(1) << dev) : 0;
  if (bit != 0 && (flags.load(std::memory_order_acquire) & bit) != 0) return Status::ok();
  Status s = setup();
  if (s.is_ok() && bit != 0) flags.fetch_or(bit, std::memory_order_acq_rel);
  return s;
}

}  // namespace qs::kernels
