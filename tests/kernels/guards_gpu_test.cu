// The poison / non-finite guards used by every GPU test actually detect unwritten and NaN outputs.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/guards.h"

namespace qs {
namespace {

TEST(Guards, PoisonIsCountedAndOverwriteClearsIt) {
  QS_REQUIRE_GPU();
  const int64_t n = 1000;
  void* buf = nullptr;
  int* cnt = nullptr;
  QS_CUDA_CHECK(cudaMalloc(&buf, n * 2));
  QS_CUDA_CHECK(cudaMalloc(&cnt, sizeof(int)));
  ASSERT_TRUE(kernels::poison_f16(buf, n, 0).is_ok());
  ASSERT_TRUE(kernels::count_nonfinite_f16(buf, n, cnt, 0).is_ok());
  int h = -1;
  QS_CUDA_CHECK(cudaMemcpy(&h, cnt, sizeof(int), cudaMemcpyDeviceToHost));
  EXPECT_EQ(h, n);
  QS_CUDA_CHECK(cudaMemset(buf, 0x3c, 2 * (n - 3)));  // 0x3c3c = 1.0586 (finite), last 3 stay poisoned
  ASSERT_TRUE(kernels::count_nonfinite_f16(buf, n, cnt, 0).is_ok());
  QS_CUDA_CHECK(cudaMemcpy(&h, cnt, sizeof(int), cudaMemcpyDeviceToHost));
  EXPECT_EQ(h, 3);
  cudaFree(buf);
  cudaFree(cnt);
}

}  // namespace
}  // namespace qs
