// Fused quantization kernels (see norm_quant.h). One CTA of 256 threads per row. Two schedules:
//  - register rows (cols % 8 == 0 and cols <= kRegCols; RMSNorm and plain quantization): each thread keeps its
//    8-value vectors of the row (vector i * 256 + thread) in registers, so the row is read from memory once and
//    the passes (statistics, amax, quantize) run on registers, y recomputed from them. On the H200 1.01-1.18x the
//    streamed schedule over bench_fused's shapes (BENCHMARKS.md): decode-size launches stay bound by
//    latency (one DRAM round trip and two or three CTA reductions per row).
//  - streamed rows (the rest, and SiLU*up): a row is walked in vectors of V halves (8 when the row length allows
//    16-byte accesses, else 1); the op is a functor that produces the fp32 value y_k to quantize; passes over the
//    row: [statistics (RMSNorm)], amax (y cached in shared memory for rows up to 28672 values), quantize. Re-reads
//    of the row hit L1/L2, so DRAM traffic is one read of the inputs and one write of the outputs.
// Every kernel is launched by launch_pdl (kernels/common/pdl.h): it reads nothing before pdl_wait, and lets its
// dependent (the next GEMM) launch right after it.
// Every fp32 operation is written as an IEEE intrinsic (no contraction), so y and the quantized values match the
// reference bit for bit, up to the order of RMSNorm's double sum of squares and expf's last-ulp differences in
// SiLU (norm_quant_gpu_test's tolerance); amax and the integer sum are order-free.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <type_traits>

#include "kernels/common/device_once.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"
#include "kernels/norm_quant/norm_quant.h"

namespace qs::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ T block_reduce(T v, T (*op)(T, T), T* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // smem may still be read by a previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = smem[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, smem[w]);
  return v;
}
__device__ float fmax_op(float a, float b) { return fmaxf(a, b); }
__device__ double dadd_op(double a, double b) { return a + b; }
__device__ int iadd_op(int a, int b) { return a + b; }

__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(h[i]);
    f[2 * i] = x.x, f[2 * i + 1] = x.y;
  }
}

template <int V>
__device__ __forceinline__ void load_h(const uint16_t* p, float (&f)[V]) {
  if constexpr (V == 8) {
    unpack8(*reinterpret_cast<const uint4*>(p), f);
  } else {
    f[0] = __half2float(__ushort_as_half(*p));
  }
}
template <int V>
__device__ __forceinline__ void store_h(uint16_t* p, const float (&f)[V]) {
  if constexpr (V == 8) {
    uint4 u;
    __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
    *p = __half_as_ushort(__float2half_rn(f[0]));
  }
}

// Rows of at most kCacheCols values (112 KiB) keep y in (dynamic) shared memory between the amax and quantize passes,
// so y is computed once; longer rows recompute it.
constexpr int kCacheCols = 28672;

// The row's quantization scale from its amax: INT8 (formats.h quantize_act_row: fp16(amax / 127), used as its
// fp32 value) or FP8 (formats/fp8.h quantize_fp8_row: amax / 448 in fp32).
struct RowScale {
  float s;      // the divisor
  __half s_h;   // INT8: the stored fp16 scale
};
template <bool kFp8>
__device__ __forceinline__ RowScale row_scale(float amax) {
  if constexpr (kFp8) {
    return {__fdiv_rn(amax, 448.0f), __float2half_rn(0.0f)};
  } else {
    const __half s_h = __float2half_rn(__fdiv_rn(amax, 127.0f));
    return {__half2float(s_h), s_h};
  }
}

// Quantizes V values of y into dst (element offset `at` of the output rows) and adds the INT8 codes to `sum`.
template <int V, typename Out>
__device__ __forceinline__ void quantize_store(const float (&y)[V], const RowScale& rs, const Out& out, int64_t at,
                                               int& sum) {
  const float s = rs.s;
  if constexpr (std::is_same_v<Out, Fp8QuantOut>) {
    uint8_t q[V];
#pragma unroll
    for (int i = 0; i < V; ++i)
      q[i] = s > 0.0f ? uint8_t(__nv_cvt_float_to_fp8(__fdiv_rn(y[i], s), __NV_SATFINITE, __NV_E4M3)) : 0;
    uint8_t* dst = out.q + at;
    if constexpr (V == 8) *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(q);
    else *dst = q[0];
  } else {
    int8_t q[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int v = s > 0.0f ? min(max(__float2int_rn(__fdiv_rn(y[i], s)), -127), 127) : 0;
      q[i] = int8_t(v);
      sum += v;
    }
    int8_t* dst = out.q + at;
    if constexpr (V == 8) *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(q);
    else *dst = q[0];
  }
}

// Writes the row's scale (and for INT8 with xsum / qsum, fp16(s * sum q) / sum q after reducing `sum` over the
// CTA).
template <typename Out>
__device__ __forceinline__ void finish_row(const RowScale& rs, int sum, const Out& out, int64_t row) {
  __shared__ int ism[kThreads / 32];
  if constexpr (std::is_same_v<Out, Fp8QuantOut>) {
    if (threadIdx.x == 0) out.scale[row] = rs.s;
  } else {
    if (out.xsum || out.qsum) sum = block_reduce(sum, iadd_op, ism);
    if (threadIdx.x == 0) {
      out.scale[row] = __half_as_ushort(rs.s_h);
      if (out.xsum) out.xsum[row] = __half_as_ushort(__float2half_rn(__fmul_rn(rs.s, float(sum))));
      if (out.qsum) out.qsum[row] = sum;
    }
  }
}

// Quantizes the row given by op.y(row, k0, y[V]): Out = QuantOut: INT8 (formats.h quantize_act_row);
// Out = Fp8QuantOut: e4m3 + FP32 scale (formats/fp8.h quantize_fp8_row).
template <int V, typename Op, typename Out>
__device__ void quantize_row(const Op& op, int64_t row, int cols, const Out& out) {
  constexpr bool kFp8 = std::is_same_v<Out, Fp8QuantOut>;
  __shared__ float fsm[kThreads / 32];
  extern __shared__ float4 cache4[];
  float* cache = reinterpret_cast<float*>(cache4);
  const bool cached = Op::kCache && cols <= kCacheCols;
  float amax = 0.0f;
  for (int k = threadIdx.x * V; k < cols; k += kThreads * V) {
    float y[V];
    op.y(row, k, y);
#pragma unroll
    for (int i = 0; i < V; ++i) amax = fmaxf(amax, fabsf(y[i]));
    if (cached) {
#pragma unroll
      for (int i = 0; i < V; ++i) cache[k + i] = y[i];
    }
  }
  const RowScale rs = row_scale<kFp8>(block_reduce(amax, fmax_op, fsm));
  int sum = 0;
  for (int k = threadIdx.x * V; k < cols; k += kThreads * V) {
    float y[V];
    if (cached) {
#pragma unroll
      for (int i = 0; i < V; ++i) y[i] = cache[k + i];  // written by this thread in the first pass
    } else {
      op.y(row, k, y);
    }
    quantize_store<V>(y, rs, out, row * cols + k, sum);
  }
  finish_row(rs, sum, out, row);
}

// Register rows: thread t holds vectors i * kThreads + t (i < NV) of the row, 8 values each; rows of at most
// kRegCols values (NV <= kMaxRegVecs). y(i, y[8]) computes the values of the thread's vector i from its registers.
constexpr int kMaxRegVecs = 16;
constexpr int kRegCols = kThreads * 8 * kMaxRegVecs;  // 32768
// Resident CTAs per SM asked of the register allocator (the most that compile without spills): plain
// quantization holds a row's values, RMSNorm also its weight vectors.
template <int NV>
constexpr int kActMinCtas = NV <= 2 ? 8 : NV <= 4 ? 6 : NV <= 8 ? 4 : 2;
template <int NV, bool kWRegs>
constexpr int kRmsMinCtas = NV <= 1   ? 8
                            : NV <= 2 ? 6
                            : kWRegs  ? (NV <= 4 ? 4 : NV <= 8 ? 2 : 1)
                                      : (NV <= 4 ? 6 : NV <= 8 ? 4 : 2);
__device__ __forceinline__ int reg_vec_col(int i) { return (i * kThreads + int(threadIdx.x)) * 8; }

template <int NV, typename Y, typename Out>
__device__ __forceinline__ void quantize_regs(const Y& y_of, int64_t row, int cols, const Out& out) {
  constexpr bool kFp8 = std::is_same_v<Out, Fp8QuantOut>;
  __shared__ float fsm[kThreads / 32];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (reg_vec_col(i) >= cols) break;
    float y[8];
    y_of(i, y);
#pragma unroll
    for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(y[j]));
  }
  const RowScale rs = row_scale<kFp8>(block_reduce(amax, fmax_op, fsm));
  int sum = 0;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (reg_vec_col(i) >= cols) break;
    float y[8];
    y_of(i, y);
    quantize_store<8>(y, rs, out, row * cols + reg_vec_col(i), sum);
  }
  finish_row(rs, sum, out, row);
}

template <int V>
struct RmsOp {
  static constexpr bool kCache = true;
  const RmsNormQuantParams& p;
  const uint16_t* h;  // the normalized input: residual_out when a residual was added, else x
  float inv;
  __device__ void y(int64_t row, int k, float (&o)[V]) const {
    float x[V], w[V];
    load_h<V>(h + row * p.cols + k, x);
    load_h<V>(p.weight + k, w);
#pragma unroll
    for (int i = 0; i < V; ++i) o[i] = __fmul_rn(__fmul_rn(x[i], inv), w[i]);
  }
};

template <int V, bool kFp8>
__global__ void __launch_bounds__(kThreads) rmsnorm_quant_kernel(const RmsNormQuantParams p) {
  __shared__ double dsm[kThreads / 32];
  pdl_wait();
  pdl_launch_dependents();  // the dependent is a GEMM (pdl.h)
  const int64_t row = blockIdx.x;
  const int cols = p.cols;
  double ss = 0.0;
  for (int k = threadIdx.x * V; k < cols; k += kThreads * V) {
    float x[V];
    load_h<V>(p.x + row * cols + k, x);
    if (p.residual_in) {
      float r[V];
      load_h<V>(p.residual_in + row * cols + k, r);
#pragma unroll
      for (int i = 0; i < V; ++i) x[i] = __half2float(__float2half_rn(__fadd_rn(x[i], r[i])));
      store_h<V>(p.residual_out + row * cols + k, x);
    }
#pragma unroll
    for (int i = 0; i < V; ++i) ss += double(x[i]) * double(x[i]);
  }
  ss = block_reduce(ss, dadd_op, dsm);
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(float(ss), float(cols)), p.eps)));
  // residual_out was written by this CTA above: make it visible to its own re-reads.
  __syncthreads();
  const RmsOp<V> op{p, p.residual_in ? p.residual_out : p.x, inv};
  if constexpr (kFp8) quantize_row<V>(op, row, cols, p.fp8);
  else quantize_row<V>(op, row, cols, p.out);
}

template <int V>
struct SiluOp {
  static constexpr bool kCache = true;
  const SiluMulQuantParams& p;
  __device__ void y(int64_t row, int k, float (&o)[V]) const {
    float g[V], u[V];
    load_h<V>(p.gate_up + row * 2 * p.cols + k, g);
    load_h<V>(p.gate_up + row * 2 * p.cols + p.cols + k, u);
#pragma unroll
    for (int i = 0; i < V; ++i) o[i] = __fmul_rn(__fdiv_rn(g[i], __fadd_rn(1.0f, expf(-g[i]))), u[i]);
  }
};

template <int V>
struct PlainOp {
  static constexpr bool kCache = false;  // y is the input itself: re-reading it is as cheap as a cache
  const ActQuantParams& p;
  __device__ void y(int64_t row, int k, float (&o)[V]) const { load_h<V>(p.x + row * p.cols + k, o); }
};

template <int V, bool kFp8>
__global__ void __launch_bounds__(kThreads) silu_mul_quant_kernel(const SiluMulQuantParams p) {
  pdl_wait();
  pdl_launch_dependents();  // the dependent is a GEMM (pdl.h)
  if constexpr (kFp8) quantize_row<V>(SiluOp<V>{p}, blockIdx.x, p.cols, p.fp8);
  else quantize_row<V>(SiluOp<V>{p}, blockIdx.x, p.cols, p.out);
}
template <int V, bool kFp8>
__global__ void __launch_bounds__(kThreads) act_quant_kernel(const ActQuantParams p) {
  pdl_wait();
  pdl_launch_dependents();  // the dependent is a GEMM (pdl.h)
  if constexpr (kFp8) quantize_row<V>(PlainOp<V>{p}, blockIdx.x, p.cols, p.fp8);
  else quantize_row<V>(PlainOp<V>{p}, blockIdx.x, p.cols, p.out);
}

// RMSNorm (+ residual) + quantization on register rows (see the file comment): h = fp16(x + residual) stays in
// registers as fp16 (exactly the value the streamed kernel re-reads). kWRegs: the weight vectors are loaded with
// h (off the critical path: latency-bound launches); else read from L1 where used, which keeps registers, and so
// resident rows, for launches of more than one wave (see RmsRegs).
template <int NV, bool kFp8, bool kWRegs>
__global__ void __launch_bounds__(kThreads, kRmsMinCtas<NV, kWRegs>)
    rmsnorm_quant_regs_kernel(const RmsNormQuantParams p) {
  __shared__ double dsm[kThreads / 32];
  const int64_t row = blockIdx.x;
  const int cols = p.cols;
  uint4 h[NV], w[kWRegs ? NV : 1];
  double ss = 0.0;
  pdl_wait();
  pdl_launch_dependents();  // the dependent is a GEMM (pdl.h)
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int k = reg_vec_col(i);
    if (k >= cols) break;
    h[i] = *reinterpret_cast<const uint4*>(p.x + row * cols + k);
    if constexpr (kWRegs) w[i] = __ldg(reinterpret_cast<const uint4*>(p.weight + k));
  }
  if (p.residual_in) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int k = reg_vec_col(i);
      if (k >= cols) break;
      float x[8], r[8];
      unpack8(h[i], x);
      unpack8(*reinterpret_cast<const uint4*>(p.residual_in + row * cols + k), r);
      __half2* hh = reinterpret_cast<__half2*>(&h[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        hh[j] = __floats2half2_rn(__fadd_rn(x[2 * j], r[2 * j]), __fadd_rn(x[2 * j + 1], r[2 * j + 1]));
      *reinterpret_cast<uint4*>(p.residual_out + row * cols + k) = h[i];  // the new residual fp16(x + r)
    }
  }
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (reg_vec_col(i) >= cols) break;
    float x[8];
    unpack8(h[i], x);
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += double(x[j]) * double(x[j]);
  }
  ss = block_reduce(ss, dadd_op, dsm);
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(float(ss), float(cols)), p.eps)));
  auto y_of = [&](int i, float(&y)[8]) {
    float x[8], ww[8];
    unpack8(h[i], x);
    if constexpr (kWRegs) unpack8(w[i], ww);
    else unpack8(__ldg(reinterpret_cast<const uint4*>(p.weight + reg_vec_col(i))), ww);
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] = __fmul_rn(__fmul_rn(x[j], inv), ww[j]);
  };
  if constexpr (kFp8) quantize_regs<NV>(y_of, row, cols, p.fp8);
  else quantize_regs<NV>(y_of, row, cols, p.out);
}

// Plain per-token quantization on register rows.
template <int NV, bool kFp8>
__global__ void __launch_bounds__(kThreads, kActMinCtas<NV>) act_quant_regs_kernel(const ActQuantParams p) {
  pdl_wait();
  pdl_launch_dependents();  // the dependent is a GEMM (pdl.h)
  const int64_t row = blockIdx.x;
  const int cols = p.cols;
  uint4 x[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int k = reg_vec_col(i);
    if (k >= cols) break;
    x[i] = *reinterpret_cast<const uint4*>(p.x + row * cols + k);
  }
  auto y_of = [&](int i, float(&y)[8]) { unpack8(x[i], y); };
  if constexpr (kFp8) quantize_regs<NV>(y_of, row, cols, p.fp8);
  else quantize_regs<NV>(y_of, row, cols, p.out);
}

// Launches Kernel<NV> with the smallest NV in {1, 2, 4, 8, 16} that holds a row of `cols` values (cols % 8 == 0,
// cols <= kRegCols).
template <template <int, bool> class K, bool kFp8, typename P>
Status launch_regs(const P& p, cudaStream_t stream) {
  const int nv = (p.cols / 8 + kThreads - 1) / kThreads;
  const dim3 grid(unsigned(p.rows)), block(kThreads);
  if (nv <= 1) QS_RETURN_IF_ERROR((K<1, kFp8>::launch(p, grid, block, stream)));
  else if (nv <= 2) QS_RETURN_IF_ERROR((K<2, kFp8>::launch(p, grid, block, stream)));
  else if (nv <= 4) QS_RETURN_IF_ERROR((K<4, kFp8>::launch(p, grid, block, stream)));
  else if (nv <= 8) QS_RETURN_IF_ERROR((K<8, kFp8>::launch(p, grid, block, stream)));
  else QS_RETURN_IF_ERROR((K<16, kFp8>::launch(p, grid, block, stream)));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}
// RMSNorm: the weight in registers for rows of up to 2 vectors per thread (no cost in resident CTAs), and for
// longer rows when the launch fits one wave of CTAs at that occupancy (H200, 8192 columns, bench_fused in two
// calls: the weight in registers 8-20% faster at <= 256 rows, 9-14% slower at >= 4096 rows than read from L1).
template <int NV, bool kFp8>
struct RmsRegs {
  static Status launch(const RmsNormQuantParams& p, dim3 g, dim3 b, cudaStream_t s) {
    if constexpr (NV > 2) {
      int dev = 0, sms = 0;
      QS_CUDA_RETURN(cudaGetDevice(&dev));
      QS_CUDA_RETURN(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      if (int64_t(p.rows) > int64_t(kRmsMinCtas<NV, true>) * sms) {
        QS_CUDA_RETURN(launch_pdl(LaunchShape{g, b, 0, s}, rmsnorm_quant_regs_kernel<NV, kFp8, false>, p));
        return Status::ok();
      }
    }
    QS_CUDA_RETURN(launch_pdl(LaunchShape{g, b, 0, s}, rmsnorm_quant_regs_kernel<NV, kFp8, true>, p));
    return Status::ok();
  }
};
template <int NV, bool kFp8>
struct ActRegs {
  static Status launch(const ActQuantParams& p, dim3 g, dim3 b, cudaStream_t s) {
    QS_CUDA_RETURN(launch_pdl(LaunchShape{g, b, 0, s}, act_quant_regs_kernel<NV, kFp8>, p));
    return Status::ok();
  }
};
bool regs_fit(int cols) { return cols % 8 == 0 && cols <= kRegCols; }

Status check(int32_t rows, int32_t cols, const QuantOut& o, const char* what) {
  if (rows < 0 || cols <= 0)
    return Status::error(std::string(what) + ": bad shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                         "]");
  if (!o.q || !o.scale) return Status::error(std::string(what) + ": quantized output and scale are required");
  return Status::ok();
}
Status check(int32_t rows, int32_t cols, const Fp8QuantOut& o, const char* what) {
  if (rows < 0 || cols <= 0)
    return Status::error(std::string(what) + ": bad shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                         "]");
  if (!o.q || !o.scale) return Status::error(std::string(what) + ": fp8 output and scale are required");
  return Status::ok();
}

// One CTA of kThreads per row, launched by launch_pdl (pdl.h; every kernel here waits first).
LaunchShape rows_shape(int32_t rows, size_t smem, cudaStream_t stream) {
  return LaunchShape{dim3(unsigned(rows)), dim3(kThreads), smem, stream};
}

size_t cache_bytes(int cols) { return cols <= kCacheCols ? size_t(cols) * sizeof(float) : 0; }

// Raises a kernel's dynamic shared-memory limit to the cache size (112 KiB), once per kernel.
template <auto Kernel>
Status allow_smem() {
  static std::atomic<uint64_t> done{0};  // one flag set per kernel instance, a bit per device (device_once.h)
  return once_per_device(done, [] {
    QS_CUDA_RETURN(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(kCacheCols * sizeof(float))));
    return Status::ok();
  });
}

template <bool kFp8>
Status rmsnorm_launch(const RmsNormQuantParams& p, cudaStream_t stream, const char* what) {
  if constexpr (kFp8) QS_RETURN_IF_ERROR(check(p.rows, p.cols, p.fp8, what));
  else QS_RETURN_IF_ERROR(check(p.rows, p.cols, p.out, what));
  if (p.residual_in && !p.residual_out) return Status::error(std::string(what) + ": residual_in needs residual_out");
  if (p.rows == 0) return Status::ok();
  if (regs_fit(p.cols)) return launch_regs<RmsRegs, kFp8>(p, stream);
  const size_t smem = cache_bytes(p.cols);
  if (p.cols % 8 == 0) {
    QS_RETURN_IF_ERROR((allow_smem<rmsnorm_quant_kernel<8, kFp8>>()));
    QS_CUDA_RETURN(launch_pdl(rows_shape(p.rows, smem, stream), rmsnorm_quant_kernel<8, kFp8>, p));
  } else {
    QS_RETURN_IF_ERROR((allow_smem<rmsnorm_quant_kernel<1, kFp8>>()));
    QS_CUDA_RETURN(launch_pdl(rows_shape(p.rows, smem, stream), rmsnorm_quant_kernel<1, kFp8>, p));
  }
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

template <bool kFp8>
Status silu_launch(const SiluMulQuantParams& p, cudaStream_t stream, const char* what) {
  if constexpr (kFp8) QS_RETURN_IF_ERROR(check(p.rows, p.cols, p.fp8, what));
  else QS_RETURN_IF_ERROR(check(p.rows, p.cols, p.out, what));
  if (p.rows == 0) return Status::ok();
  const size_t smem = cache_bytes(p.cols);
  if (p.cols % 8 == 0) {
    QS_RETURN_IF_ERROR((allow_smem<silu_mul_quant_kernel<8, kFp8>>()));
    QS_CUDA_RETURN(launch_pdl(rows_shape(p.rows, smem, stream), silu_mul_quant_kernel<8, kFp8>, p));
  } else {
    QS_RETURN_IF_ERROR((allow_smem<silu_mul_quant_kernel<1, kFp8>>()));
    QS_CUDA_RETURN(launch_pdl(rows_shape(p.rows, smem, stream), silu_mul_quant_kernel<1, kFp8>, p));
  }
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

template <bool kFp8>
Status act_launch(const ActQuantParams& p, cudaStream_t stream, const char* what) {
  if constexpr (kFp8) QS_RETURN_IF_ERROR(check(p.rows, p.cols, p.fp8, what));
  else QS_RETURN_IF_ERROR(check(p.rows, p.cols, p.out, what));
  if (p.rows == 0) return Status::ok();
  if (regs_fit(p.cols)) return launch_regs<ActRegs, kFp8>(p, stream);
  if (p.cols % 8 == 0) QS_CUDA_RETURN(launch_pdl(rows_shape(p.rows, 0, stream), act_quant_kernel<8, kFp8>, p));
  else QS_CUDA_RETURN(launch_pdl(rows_shape(p.rows, 0, stream), act_quant_kernel<1, kFp8>, p));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace

Status rmsnorm_quant(const RmsNormQuantParams& p, cudaStream_t stream) {
  return rmsnorm_launch<false>(p, stream, "rmsnorm_quant");
}
Status silu_mul_quant(const SiluMulQuantParams& p, cudaStream_t stream) {
  return silu_launch<false>(p, stream, "silu_mul_quant");
}
Status act_quant(const ActQuantParams& p, cudaStream_t stream) { return act_launch<false>(p, stream, "act_quant"); }

Status rmsnorm_quant_fp8(const RmsNormQuantParams& p, cudaStream_t stream) {
  return rmsnorm_launch<true>(p, stream, "rmsnorm_quant_fp8");
}
Status silu_mul_quant_fp8(const SiluMulQuantParams& p, cudaStream_t stream) {
  return silu_launch<true>(p, stream, "silu_mul_quant_fp8");
}
Status act_quant_fp8(const ActQuantParams& p, cudaStream_t stream) {
  return act_launch<true>(p, stream, "act_quant_fp8");
}

}  // namespace qs::kernels
