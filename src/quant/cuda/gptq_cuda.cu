// GPTQ with the inverse-Hessian factor and the lazy batch updates on the GPU (see gptq_cuda.h).
#include <cublas_v2.h>
#include <cusolverDn.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "core/error.h"
#include "kernels/common/device_buffer.h"
#include "quant/cuda/gptq_cuda.h"
#include "quant/cuda/layer_runner_cuda.h"

namespace qs::quant {
namespace {

#define QS_CUBLAS(expr)                                                           \
  do {                                                                            \
    const cublasStatus_t _s = (expr);                                             \
    QS_CHECK(_s == CUBLAS_STATUS_SUCCESS) << #expr << ": cuBLAS status " << int(_s); \
  } while (0)
#define QS_CUSOLVER(expr)                                                               \
  do {                                                                                  \
    const cusolverStatus_t _s = (expr);                                                 \
    QS_CHECK(_s == CUSOLVER_STATUS_SUCCESS) << #expr << ": cuSOLVER status " << int(_s); \
  } while (0)

// cuSOLVER, loaded on first use.
struct Cusolver {
  decltype(&cusolverDnCreate) create = nullptr;
  decltype(&cusolverDnDpotrf_bufferSize) potrf_size = nullptr;
  decltype(&cusolverDnDpotrf) potrf = nullptr;
  decltype(&cusolverDnDpotri_bufferSize) potri_size = nullptr;
  decltype(&cusolverDnDpotri) potri = nullptr;
  cusolverDnHandle_t handle = nullptr;
};
const Cusolver& cusolver() {
  static Cusolver s;
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    void* lib = nullptr;
    for (const char* n : {"libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"})
      if ((lib = dlopen(n, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    if (!lib) {
      error = std::string("cannot load libcusolver.so.12 (add its folder to LD_LIBRARY_PATH): ") + dlerror();
      return;
    }
    s.create = reinterpret_cast<decltype(s.create)>(dlsym(lib, "cusolverDnCreate"));
    s.potrf_size = reinterpret_cast<decltype(s.potrf_size)>(dlsym(lib, "cusolverDnDpotrf_bufferSize"));
    s.potrf = reinterpret_cast<decltype(s.potrf)>(dlsym(lib, "cusolverDnDpotrf"));
    s.potri_size = reinterpret_cast<decltype(s.potri_size)>(dlsym(lib, "cusolverDnDpotri_bufferSize"));
    s.potri = reinterpret_cast<decltype(s.potri)>(dlsym(lib, "cusolverDnDpotri"));
    if (!s.create || !s.potrf_size || !s.potrf || !s.potri_size || !s.potri) {
      error = "libcusolver lacks the dense Cholesky functions";
      return;
    }
    if (s.create(&s.handle) != CUSOLVER_STATUS_SUCCESS) error = "cusolverDnCreate failed";
  });
  QS_CHECK(error.empty()) << "GPTQ on the GPU: " << error;
  return s;
}

cublasHandle_t cublas() {
  static cublasHandle_t h = nullptr;
  static std::once_flag once;
  std::call_once(once, [] { QS_CUBLAS(cublasCreate(&h)); });
  return h;
}

// Column-major lower -> full symmetric (a is K x K; the lower triangle of column-major = row-major upper).
__global__ void symmetrize_lower(double* a, int64_t k) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= k * k) return;
  const int64_t col = idx / k, row = idx % k;  // column-major (row, col)
  if (row < col) a[row + col * k] = a[col + row * k];
}

// Row-major U (rows i, cols j >= i; zeros below) from column-major upper-stored U: urm[i*k + j] = uc[i + j*k].
__global__ void upper_to_row_major(const double* uc, double* urm, int64_t k) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= k * k) return;
  const int64_t i = idx / k, j = idx % k;
  urm[idx] = j >= i ? uc[i + j * k] : 0.0;
}

// w[r, i] = 0 for the dead input columns i (dead[i] != 0).
__global__ void zero_columns(float* w, const uint8_t* dead, int64_t n, int64_t k) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < n * k && dead[idx % k]) w[idx] = 0.0f;
}

// Page-locked host memory of n elements (cudaMallocHost), freed on destruction.
template <typename T>
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t n) {
    void* p = nullptr;
    QS_CUDA_CHECK(cudaMallocHost(&p, std::max<size_t>(n, 1) * sizeof(T)));
    p_ = static_cast<T*>(p);
  }
  ~PinnedBuffer() { cudaFreeHost(p_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  T* data() { return p_; }

 private:
  T* p_ = nullptr;
};

__global__ void to_double(const float* x, double* y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = double(x[i]);
}

// w[r, col0 + j] -= float(acc[r, j]) for r < n, j < width (w row-major with row length k).
__global__ void subtract_update(float* w, const double* acc, int64_t n, int64_t k, int64_t col0, int64_t width) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * width) return;
  const int64_t r = idx / width, j = idx % width;
  w[r * k + col0 + j] -= float(acc[idx]);
}

unsigned blocks(int64_t n) { return unsigned((n + 255) / 256); }

// a[i, i] = (a[i, i] == 0 ? 1 : a[i, i]) + add: dead inputs get a unit diagonal, then the damping (the host
// path's two steps, the same double operations).
__global__ void damp_diagonal(double* a, int64_t k, double add) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= k) return;
  double& d = a[i * k + i];
  if (d == 0.0) d = 1.0;
  d += add;
}

// U (row-major, upper) with U^T U = (H + damp * mean(diag H) * I)^-1, as gptq_inverse_hessian_factor, on the GPU.
// H is uploaded as it is (no host copy: 1.6 GB for a 14336-wide down_proj) and damped on the device.
DeviceBuffer<double> inverse_factor(const std::vector<double>& h, int64_t k, double damp) {
  double mean = 0.0;
  for (int64_t i = 0; i < k; ++i) mean += h[size_t(i * k + i)] == 0.0 ? 1.0 : h[size_t(i * k + i)];  // dead input: 1
  mean /= double(k);
  const Cusolver& cs = cusolver();
  DeviceBuffer<double> a(h);  // symmetric: row- and column-major alike
  damp_diagonal<<<blocks(k), 256>>>(a.get(), k, damp * mean);
  QS_CUDA_CHECK(cudaGetLastError());
  DeviceBuffer<int> info(1);
  int lwork = 0, lwork2 = 0;
  QS_CUSOLVER(cs.potrf_size(cs.handle, CUBLAS_FILL_MODE_LOWER, int(k), a.get(), int(k), &lwork));
  QS_CUSOLVER(cs.potri_size(cs.handle, CUBLAS_FILL_MODE_LOWER, int(k), a.get(), int(k), &lwork2));
  DeviceBuffer<double> work(size_t(std::max({lwork, lwork2, 1})));
  auto check_info = [&](const char* step) {
    const int v = info.download()[0];
    QS_CHECK(v == 0) << "gptq (damped Hessian): " << step << " failed: the matrix is not positive definite (info "
                     << v << ")";
  };
  QS_CUSOLVER(cs.potrf(cs.handle, CUBLAS_FILL_MODE_LOWER, int(k), a.get(), int(k), work.get(), lwork, info.get()));
  check_info("Cholesky");
  QS_CUSOLVER(cs.potri(cs.handle, CUBLAS_FILL_MODE_LOWER, int(k), a.get(), int(k), work.get(), lwork2, info.get()));
  check_info("inverse");
  symmetrize_lower<<<blocks(k * k), 256>>>(a.get(), k);
  QS_CUDA_CHECK(cudaGetLastError());
  QS_CUSOLVER(cs.potrf(cs.handle, CUBLAS_FILL_MODE_UPPER, int(k), a.get(), int(k), work.get(), lwork, info.get()));
  check_info("Cholesky of the inverse");
  DeviceBuffer<double> u(size_t(k * k));
  upper_to_row_major<<<blocks(k * k), 256>>>(a.get(), u.get(), k);
  QS_CUDA_CHECK(cudaGetLastError());
  qoq::note_cuda_memory();
  return u;
}

}  // namespace

Tensor gptq_cuda(const Tensor& w, const std::vector<double>& h, GptqRounding& rounding, const GptqOptions& opt) {
  QS_CHECK(w.dtype() == DType::F32 && w.ndim() == 2) << "gptq: expected an F32 [N, K] weight, got " << w.desc();
  const int64_t n = w.dim(0), k = w.dim(1), bs = opt.block_size, gs = rounding.group_size();
  QS_CHECK(int64_t(h.size()) == k * k) << "gptq: Hessian has " << h.size() << " entries, expected " << k << " x " << k;
  QS_CHECK(bs > 0) << "gptq: block size " << bs << " must be positive";
  QS_CHECK(gs == 0 || (gs > 0 && bs % gs == 0 && k % gs == 0))
      << "gptq: group size " << gs << " must divide the block size " << bs << " and K = " << k;
  QS_CHECK(k < (int64_t(1) << 31) / 1 && n < (int64_t(1) << 31)) << "gptq: weight too large for the GPU path";
  const DeviceBuffer<double> u = inverse_factor(h, k, opt.damp);
  std::vector<uint8_t> dead(static_cast<size_t>(k));
  bool any_dead = false;
  for (int64_t i = 0; i < k; ++i) any_dead |= (dead[size_t(i)] = h[size_t(i * k + i)] == 0.0);

  // The running weights live on the GPU (uploaded as they are, dead columns zeroed there); each block's columns
  // come back below.
  const float* orig = w.data<float>();
  DeviceBuffer<float> dw(size_t(n * k));
  QS_CUDA_CHECK(cudaMemcpy(dw.get(), orig, size_t(n * k) * 4, cudaMemcpyHostToDevice));
  if (any_dead) {
    const DeviceBuffer<uint8_t> ddead(dead);
    zero_columns<<<blocks(n * k), 256>>>(dw.get(), ddead.get(), n, k);
    QS_CUDA_CHECK(cudaGetLastError());
    QS_CUDA_CHECK(cudaDeviceSynchronize());
  }

  Tensor q(DType::F32, {n, k});
  float* qp = q.data<float>();
  PinnedBuffer<float> blk(size_t(n * bs)), err(size_t(n * bs));  // page-locked: the per-block copies run at full speed
  std::vector<double> ublk(static_cast<size_t>(bs * bs));  // U's diagonal block of the current columns
  DeviceBuffer<float> derr(size_t(n * bs));
  DeviceBuffer<double> derr_d(size_t(n * bs)), acc(size_t(n * std::max<int64_t>(k - bs, 1)));
  qoq::note_cuda_memory();
  for (int64_t i1 = 0; i1 < k; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, k), w_ = i2 - i1;
    // This block's columns (as updated by the earlier blocks) and U's rows i1..i2.
    QS_CUDA_CHECK(cudaMemcpy2D(blk.data(), size_t(w_) * 4, dw.get() + i1, size_t(k) * 4, size_t(w_) * 4, size_t(n),
                               cudaMemcpyDeviceToHost));
    // Only U[i1:i2, i1:i2] is read on the host (the rest of rows i1..i2 is applied on the GPU below).
    QS_CUDA_CHECK(cudaMemcpy2D(ublk.data(), size_t(w_) * 8, u.get() + i1 * k + i1, size_t(k) * 8, size_t(w_) * 8,
                               size_t(w_), cudaMemcpyDeviceToHost));
    gptq_column_block(rounding, n, k, i1, i2, orig, blk.data(), w_, ublk.data(), w_, err.data(), w_, qp);
    if (i2 == k) break;
    // W[:, i2:] -= Err [N, w_] x U[i1:i2, i2:] (double), on the GPU.
    QS_CUDA_CHECK(cudaMemcpy(derr.get(), err.data(), size_t(n * w_) * 4, cudaMemcpyHostToDevice));
    to_double<<<blocks(n * w_), 256>>>(derr.get(), derr_d.get(), n * w_);
    QS_CUDA_CHECK(cudaGetLastError());
    const double one = 1.0, zero = 0.0;
    // Column-major: acc ((k - i2) x n) = U_rows ((k - i2) x w_, ld k) x err (w_ x n, ld w_).
    QS_CUBLAS(cublasDgemm(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(k - i2), int(n), int(w_), &one, u.get() + i1 * k + i2,
                          int(k), derr_d.get(), int(w_), &zero, acc.get(), int(k - i2)));
    subtract_update<<<blocks(n * (k - i2)), 256>>>(dw.get(), acc.get(), n, k, i2, k - i2);
    QS_CUDA_CHECK(cudaGetLastError());
  }
  QS_CUDA_CHECK(cudaDeviceSynchronize());
  return q;
}

}  // namespace qs::quant
