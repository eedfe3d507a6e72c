// Small FP16 / FP32 kernels of the GPU model runner (see elementwise.h).
#include "kernels/elementwise/elementwise.h"

#include <cuda_fp16.h>

#include <cfloat>
#include <string>

#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"

namespace qs::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float h2f(uint16_t b) { return __half2float(__ushort_as_half(b)); }
__device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Block-wide sum (kThreads threads).
__device__ float block_sum(float v) {
  __shared__ float red[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous call
  if (l == 0) red[w] = v;
  __syncthreads();
  float s = 0.0f;
  if (threadIdx.x < 32) {
    s = threadIdx.x < kThreads / 32 ? red[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) red[0] = s;
  }
  __syncthreads();
  return red[0];
}

__global__ void embedding_kernel(const int32_t* __restrict__ ids, const uint16_t* __restrict__ table, int64_t vocab,
                                 int32_t cols, uint16_t* __restrict__ out) {
  pdl_wait();
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r];
  const bool ok = id >= 0 && id < vocab;
  // 16-byte copies when cols % 8 == 0 (always for the shapes we accept), else 2-byte.
  if (cols % 8 == 0) {
    const uint4* src = reinterpret_cast<const uint4*>(table + int64_t(ok ? id : 0) * cols);
    uint4* dst = reinterpret_cast<uint4*>(out + r * cols);
    for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) dst[c] = ok ? src[c] : make_uint4(0, 0, 0, 0);
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
      out[r * cols + c] = ok ? table[int64_t(id) * cols + c] : uint16_t(0);
  }
}

__global__ void rmsnorm_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ row_index, int32_t cols,
                               const uint16_t* __restrict__ w, float eps, uint16_t* __restrict__ out) {
  pdl_wait();
  const int64_t r = blockIdx.x;
  const int64_t src = row_index ? row_index[r] : r;
  const uint16_t* xr = x + src * cols;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = h2f(xr[c]);
    ss += v * v;
  }
  const float tot = block_sum(ss);
  const float inv = 1.0f / sqrtf(tot / float(cols) + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = f2h((h2f(xr[c]) * inv) * h2f(w[c]));
}

__global__ void silu_mul_kernel(const uint16_t* __restrict__ gu, int32_t cols, uint16_t* __restrict__ out) {
  pdl_wait();
  const int64_t r = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const float g = h2f(gu[r * 2 * cols + c]), u = h2f(gu[r * 2 * cols + cols + c]);
  out[r * cols + c] = f2h((g / (1.0f + expf(-g))) * u);
}

__global__ void add_bias_kernel(uint16_t* __restrict__ y, const uint16_t* __restrict__ b, int32_t cols) {
  pdl_wait();
  const int64_t r = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  y[r * cols + c] = f2h(h2f(y[r * cols + c]) + h2f(b[c]));
}

__global__ void fill_uniform_kernel(uint16_t* x, int64_t n, uint64_t seed, float amp) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double u = double(splitmix64(seed * 0x100000001B3ull + uint64_t(i)) >> 11) * (1.0 / 9007199254740992.0);
    x[i] = f2h(float((2.0 * u - 1.0) * amp));
  }
}

__global__ void fill_const_kernel(uint16_t* x, int64_t n, uint16_t v) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = v;
}

__global__ void fill_bytes_kernel(uint64_t* x, int64_t words, uint8_t* tail, int64_t tail_n, uint64_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = splitmix64(seed * 0x100000001B3ull + uint64_t(i));
  if (blockIdx.x == 0 && threadIdx.x < tail_n)
    tail[threadIdx.x] = uint8_t(splitmix64(seed + 0x5555ull + threadIdx.x));
}

__global__ void fill_e4m3_kernel(uint8_t* x, int64_t n, uint64_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint8_t b = uint8_t(splitmix64(seed * 0x100000001B3ull + uint64_t(i)));
    if ((b & 0x7f) == 0x7f) b ^= 1;
    x[i] = b;
  }
}

__global__ void fill_s2zn_kernel(uint16_t* x, int64_t n, uint64_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int s2 = 1 + int(splitmix64(seed * 0x100000001B3ull + uint64_t(i)) % 16);
    const int zn = -8 * s2;
    x[i] = uint16_t(s2 | ((zn & 0xff) << 8));
  }
}

unsigned grid_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

}  // namespace

Status elementwise_probe() {
  cudaFuncAttributes a{};
  const cudaError_t e = cudaFuncGetAttributes(&a, add_bias_kernel);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    return Status::error("this build has no kernel image for the GPU (sm_" + std::to_string(major * 10 + minor) +
                         "): " + cudaGetErrorString(e));
  }
  return Status::ok();
}

Status embedding_gather_f16(const int32_t* ids, int32_t rows, const uint16_t* table, int64_t vocab, int32_t cols,
                            uint16_t* out, cudaStream_t stream) {
  if (rows <= 0) return Status::ok();
  QS_CUDA_RETURN(launch_pdl(LaunchShape{dim3(unsigned(rows)), dim3(128), 0, stream}, embedding_kernel, ids, table,
                            vocab, cols, out));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status rmsnorm_f16(const uint16_t* x, const int32_t* row_index, int32_t rows, int32_t cols, const uint16_t* weight,
                   float eps, uint16_t* out, cudaStream_t stream) {
  if (rows <= 0) return Status::ok();
  if (cols <= 0) return Status::error("rmsnorm_f16: cols must be positive");
  QS_CUDA_RETURN(launch_pdl(LaunchShape{dim3(unsigned(rows)), dim3(kThreads), 0, stream}, rmsnorm_kernel, x, row_index,
                            cols, weight, eps, out));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status silu_mul_f16(const uint16_t* gate_up, int32_t rows, int32_t cols, uint16_t* out, cudaStream_t stream) {
  if (rows <= 0) return Status::ok();
  if (rows > 65535) return Status::error("silu_mul_f16: more than 65535 rows");
  QS_CUDA_RETURN(launch_pdl(
      LaunchShape{dim3(unsigned((cols + kThreads - 1) / kThreads), unsigned(rows)), dim3(kThreads), 0, stream},
      silu_mul_kernel, gate_up, cols, out));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status add_bias_f16(uint16_t* y, const uint16_t* bias, int32_t rows, int32_t cols, cudaStream_t stream) {
  if (rows <= 0) return Status::ok();
  if (rows > 65535) return Status::error("add_bias_f16: more than 65535 rows");
  QS_CUDA_RETURN(launch_pdl(
      LaunchShape{dim3(unsigned((cols + kThreads - 1) / kThreads), unsigned(rows)), dim3(kThreads), 0, stream},
      add_bias_kernel, y, bias, cols));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status fill_uniform_f16(uint16_t* x, int64_t n, uint64_t seed, float amp, cudaStream_t stream) {
  if (n <= 0) return Status::ok();
  fill_uniform_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, seed, amp);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status fill_const_f16(uint16_t* x, int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return Status::ok();
  const __half h = __float2half_rn(value);
  fill_const_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, __half_as_ushort(h));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status fill_random_bytes(void* x, int64_t nbytes, uint64_t seed, cudaStream_t stream) {
  if (nbytes <= 0) return Status::ok();
  if (reinterpret_cast<uintptr_t>(x) % 8 != 0) return Status::error("fill_random_bytes: pointer not 8-byte aligned");
  const int64_t words = nbytes / 8;
  fill_bytes_kernel<<<grid_for(words), kThreads, 0, stream>>>(static_cast<uint64_t*>(x), words,
                                                               static_cast<uint8_t*>(x) + words * 8, nbytes % 8, seed);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status fill_random_e4m3(uint8_t* x, int64_t n, uint64_t seed, cudaStream_t stream) {
  if (n <= 0) return Status::ok();
  fill_e4m3_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, seed);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

Status fill_random_s2zn(uint16_t* x, int64_t n, uint64_t seed, cudaStream_t stream) {
  if (n <= 0) return Status::ok();
  fill_s2zn_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, seed);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
