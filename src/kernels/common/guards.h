// Device-side test guards (STYLE.md #4): poison buffers before a kernel runs and count non-finite or
// still-poisoned elements afterwards. Framework-free: raw pointers, a stream, a Status.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"

namespace qs::kernels {

// Fills `n` FP16 elements at `p` with the NaN pattern 0x7fff (what an unwritten output will still hold).
Status poison_f16(void* p, int64_t n, cudaStream_t stream);
// Counts FP16 elements that are NaN or +-inf into *count_dev (an int on the device, overwritten).
Status count_nonfinite_f16(const void* p, int64_t n, int* count_dev, cudaStream_t stream);

}  // namespace qs::kernels
