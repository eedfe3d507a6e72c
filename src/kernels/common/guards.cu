// Poison / non-finite-count kernels (see guards.h).
#include <cuda_fp16.h>

#include "kernels/common/cuda_check.h"
#include "kernels/common/guards.h"

namespace qs::kernels {
namespace {

__global__ void poison_kernel(uint16_t* p, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = 0x7fff;
}

__global__ void nonfinite_kernel(const uint16_t* p, int64_t n, int* count) {
  int local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    local += ((p[i] & 0x7c00) == 0x7c00);  // exponent all ones: inf or NaN
  if (local) atomicAdd(count, local);
}

}  // namespace

Status poison_f16(void* p, int64_t n, cudaStream_t stream) {
  if (n == 0) return Status::ok();
  poison_kernel<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(p), n);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status count_nonfinite_f16(const void* p, int64_t n, int* count_dev, cudaStream_t stream) {
  QS_CUDA_RETURN(cudaMemsetAsync(count_dev, 0, sizeof(int), stream));
  if (n == 0) return Status::ok();
  nonfinite_kernel<<<1024, 256, 0, stream>>>(static_cast<const uint16_t*>(p), n, count_dev);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
