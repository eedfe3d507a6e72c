// Device-buffer helpers for the GPU tests of the attention / KV-cache / quantization kernels: an owning device
// array with upload/download, poisoning and a non-finite count (kernels/common/guards.h).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/common/cuda_check.h"
#include "kernels/common/device_buffer.h"
#include "kernels/common/guards.h"
#include "common/test_util.h"

namespace qs::test {


// Poisons an FP16 buffer with NaN (what an unwritten output keeps).
inline void poison(DeviceBuffer<uint16_t>& b) { ASSERT_TRUE(kernels::poison_f16(b.get(), int64_t(b.size()), 0).is_ok()); }

// Number of NaN/inf (incl. still-poisoned) FP16 elements.
inline int nonfinite(const DeviceBuffer<uint16_t>& b) {
  DeviceBuffer<int> c(1);
  EXPECT_TRUE(kernels::count_nonfinite_f16(b.get(), int64_t(b.size()), c.get(), 0).is_ok());
  return c.download()[0];
}

}  // namespace qs::test
