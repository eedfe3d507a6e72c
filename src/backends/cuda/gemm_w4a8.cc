// CUDA binding of the quantized GEMMs: weight upload with repack at load, plan and run (see gemm_w4a8.h).
#include "backends/cuda/gemm_w4a8.h"

#include <vector>

#include "core/error.h"
#include "kernels/common/cuda_check.h"
#include "kernels/gemm_w4a8/repack.h"

namespace qs::cuda {
namespace {

template <typename T>
T* upload_bytes(const void* src, size_t bytes) {
  void* d = nullptr;
  QS_CUDA_CHECK(cudaMalloc(&d, bytes));
  const cudaError_t e = cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaFree(d);
    QS_FAIL() << "cudaMemcpy (weight upload): " << cudaGetErrorString(e);
  }
  return static_cast<T*>(d);
}

}  // namespace

QGemmDeviceWeights QGemmDeviceWeights::upload(const ref_cpu::QGemmWeights& w) {
  ref_cpu::check_qgemm_args(w, ref_cpu::QGemmActs{});
  QS_CHECK(w.n % 16 == 0 && w.k % 128 == 0)
      << "CUDA qgemm: weight shape [" << w.n << ", " << w.k << "] needs N % 16 == 0 and K % 128 == 0";
  QS_CHECK(w.n < (int64_t(1) << 30) && w.k < (int64_t(1) << 30)) << "CUDA qgemm: weight too large";
  QGemmDeviceWeights d;
  d.variant_ = w.variant;
  d.n_ = int(w.n);
  d.k_ = int(w.k);
  int dev = 0;
  QS_CUDA_CHECK(cudaGetDevice(&dev));
  QS_CUDA_CHECK(cudaDeviceGetAttribute(&d.num_sms_, cudaDevAttrMultiProcessorCount, dev));
  int major = 0, minor = 0;
  QS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  QS_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  d.sm_version_ = major * 10 + minor;
  if (w.variant == WeightFormat::kW8A8) {
    const std::vector<uint8_t> r = kernels::repack_w8(reinterpret_cast<const int8_t*>(w.q), w.n, w.k);
    d.w_ = upload_bytes<void>(r.data(), r.size());
  } else {
    const std::vector<uint8_t> r = kernels::repack_w4(w.q, w.n, w.k);
    d.w_ = upload_bytes<void>(r.data(), r.size());
  }
  d.scale_ = upload_bytes<uint16_t>(w.scale, size_t(w.n) * 2);
  if (w.variant == WeightFormat::kW4A8PerChannel) d.szero_ = upload_bytes<uint16_t>(w.szero, size_t(w.n) * 2);
  if (w.variant == WeightFormat::kW4A8G128) {
    const std::vector<uint16_t> r = kernels::repack_s2zn(w.s2, w.zn, w.n, w.k);
    d.s2zn_ = upload_bytes<uint16_t>(r.data(), r.size() * 2);
  }
  kernels::qgemm_prepare(d.params(QGemmCall{}), &d.prep_).throw_if_error();
  return d;
}

QGemmDeviceWeights& QGemmDeviceWeights::operator=(QGemmDeviceWeights&& o) noexcept {
  if (this != &o) {
    release();
    variant_ = o.variant_;
    n_ = o.n_;
    k_ = o.k_;
    num_sms_ = o.num_sms_;
    sm_version_ = o.sm_version_;
    w_ = o.w_;
    scale_ = o.scale_;
    szero_ = o.szero_;
    s2zn_ = o.s2zn_;
    prep_ = o.prep_;
    o.prep_.ready = false;
    o.w_ = nullptr;
    o.scale_ = o.szero_ = o.s2zn_ = nullptr;
  }
  return *this;
}

QGemmDeviceWeights::~QGemmDeviceWeights() { release(); }

void QGemmDeviceWeights::release() {
  for (void* p : {w_, static_cast<void*>(scale_), static_cast<void*>(szero_), static_cast<void*>(s2zn_)})
    if (p) cudaFree(p);
  w_ = nullptr;
  scale_ = szero_ = s2zn_ = nullptr;
}

kernels::QGemmPlan QGemmDeviceWeights::plan(int m, int splits_override) const {
  return kernels::qgemm_plan(variant_, m, n_, k_, num_sms_, sm_version_, splits_override);
}

kernels::QGemmParams QGemmDeviceWeights::params(const QGemmCall& c) const {
  kernels::QGemmParams p;
  p.variant = variant_;
  p.m = c.m;
  p.n = n_;
  p.k = k_;
  p.x = c.x;
  p.sx = c.sx;
  p.xsum = c.xsum;
  p.qsum = c.qsum;
  p.w = w_;
  p.scale = scale_;
  p.szero = szero_;
  p.s2zn = s2zn_;
  p.bias = c.bias;
  p.residual = c.residual;
  p.y = c.y;
  p.epilogue = c.epilogue;
  p.acc_out = c.acc_out;
  p.workspace = c.workspace;
  return p;
}

Status QGemmDeviceWeights::run(const kernels::QGemmPlan& plan, const QGemmCall& call, cudaStream_t stream) const {
  if (!w_) return Status::error("CUDA qgemm: weights not uploaded");
  return kernels::qgemm_run(params(call), plan, stream, &prep_);
}

}  // namespace qs::cuda
