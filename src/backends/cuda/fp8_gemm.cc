// cuBLASLt FP8 GEMM binding (see fp8_gemm.h). cuBLASLt is column-major, so the row-major problem is computed as
// D[n x m] = op(A)[n x k] * B[k x m] with A = W (k x n column-major, transposed: the "TN" layout FP8 requires),
// B = X (k x m column-major) and D = Y (n x m column-major = Y[m][n] row-major). cuBLAS's M is our n: the A scale
// vector is sw [n] and the B scale vector is sx [m].
#include "backends/cuda/fp8_gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <string>

#include "core/error.h"

namespace qs::cuda {

namespace {

const char* lt_status(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    default: return "error";
  }
}

#define QS_LT_CHECK(expr)                                                                         \
  do {                                                                                            \
    const cublasStatus_t _qs_s = (expr);                                                          \
    QS_CHECK(_qs_s == CUBLAS_STATUS_SUCCESS) << "fp8_gemm: " << #expr << ": " << lt_status(_qs_s) \
                                             << " (" << int(_qs_s) << ")";                        \
  } while (0)

}  // namespace

struct Fp8Gemm::Impl {
  cublasLtHandle_t lt = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;  // lb / ld columns are set to m per call
  std::vector<int> bucket_m;                                         // upper m of each bucket, ascending
  std::vector<cublasLtMatmulAlgo_t> algo;                            // one per bucket

  void set_m(int m) {
    const uint64_t cols = uint64_t(m);
    QS_LT_CHECK(cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols)));
    QS_LT_CHECK(cublasLtMatrixLayoutSetAttribute(ld, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols)));
  }
  void set_scales(const void* sw, const void* sx) {
    QS_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof(sw)));
    QS_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof(sx)));
  }
  ~Impl() {
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (lt) cublasLtDestroy(lt);
  }
};

Fp8Gemm::Fp8Gemm(int n, int k, int max_m, size_t max_workspace) : n_(n), k_(k), max_m_(max_m) {
  QS_CHECK(n > 0 && k > 0 && max_m > 0) << "fp8_gemm: bad shape n=" << n << " k=" << k << " max_m=" << max_m;
  QS_CHECK(k % 16 == 0) << "fp8_gemm: k must be a multiple of 16 (cuBLASLt FP8), got " << k;
  QS_CHECK(n % 8 == 0) << "fp8_gemm: n must be a multiple of 8, got " << n;
  impl_ = new Impl;
  Impl& im = *impl_;
  try {
    QS_LT_CHECK(cublasLtCreate(&im.lt));
    QS_LT_CHECK(cublasLtMatmulDescCreate(&im.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    QS_LT_CHECK(cublasLtMatmulDescSetAttribute(im.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    QS_LT_CHECK(cublasLtMatmulDescSetAttribute(im.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    QS_LT_CHECK(cublasLtMatmulDescSetAttribute(im.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    QS_LT_CHECK(cublasLtMatmulDescSetAttribute(im.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
    // Placeholder (never dereferenced) scale pointers for the heuristic; run() sets the real ones.
    im.set_scales(reinterpret_cast<const void*>(uintptr_t(256)), reinterpret_cast<const void*>(uintptr_t(256)));
    QS_LT_CHECK(cublasLtMatrixLayoutCreate(&im.la, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), int64_t(k)));
    QS_LT_CHECK(cublasLtMatrixLayoutCreate(&im.lb, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(max_m), int64_t(k)));
    QS_LT_CHECK(cublasLtMatrixLayoutCreate(&im.ld, CUDA_R_16F, uint64_t(n), uint64_t(max_m), int64_t(n)));
    cublasLtMatmulPreference_t pref = nullptr;
    QS_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    QS_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
                                                     sizeof(max_workspace)));
    for (int lo = 1, hi = 1;; lo = hi + 1, hi *= 2) {
      hi = std::min(hi, max_m);
      im.set_m(hi);
      cublasLtMatmulHeuristicResult_t h{};
      int found = 0;
      const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(im.lt, im.desc, im.la, im.lb, im.ld, im.ld, pref, 1,
                                                               &h, &found);
      if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
        cublasLtMatmulPreferenceDestroy(pref);
        QS_CHECK(false) << "fp8_gemm: cuBLASLt has no FP8 outer-vector-scaled algorithm for m=" << hi << " n=" << n
                        << " k=" << k << " (" << lt_status(hs) << "); needs sm_90+ and cuBLAS >= 12.9";
      }
      size_t ws = h.workspaceSize;
      // The algorithm serves every m in [lo, hi]: check the smallest too (and take its workspace if larger).
      if (lo < hi) {
        im.set_m(lo);
        cublasLtMatmulHeuristicResult_t c{};
        const cublasStatus_t cs = cublasLtMatmulAlgoCheck(im.lt, im.desc, im.la, im.lb, im.ld, im.ld, &h.algo, &c);
        if (cs != CUBLAS_STATUS_SUCCESS) cublasLtMatmulPreferenceDestroy(pref);
        QS_CHECK(cs == CUBLAS_STATUS_SUCCESS) << "fp8_gemm: the algorithm for m=" << hi << " does not serve m=" << lo
                                              << " (" << lt_status(cs) << ")";
        ws = std::max(ws, c.workspaceSize);
      }
      workspace_bytes_ = std::max(workspace_bytes_, ws);
      im.bucket_m.push_back(hi);
      im.algo.push_back(h.algo);
      if (hi == max_m) break;
    }
    cublasLtMatmulPreferenceDestroy(pref);
  } catch (...) {
    delete impl_;
    impl_ = nullptr;
    throw;
  }
}

Fp8Gemm::~Fp8Gemm() { delete impl_; }

Status Fp8Gemm::run(const Fp8GemmCall& c, void* workspace, cudaStream_t stream) {
  if (c.m < 1 || c.m > max_m_)
    return Status::error("fp8_gemm: m=" + std::to_string(c.m) + " outside [1, " + std::to_string(max_m_) + "]");
  if (!c.x || !c.sx || !c.w || !c.sw || !c.y) return Status::error("fp8_gemm: x, sx, w, sw and y are required");
  if (workspace_bytes_ && !workspace) return Status::error("fp8_gemm: workspace is required");
  Impl& im = *impl_;
  const size_t b = size_t(std::lower_bound(im.bucket_m.begin(), im.bucket_m.end(), c.m) - im.bucket_m.begin());
  try {
    im.set_m(c.m);
    im.set_scales(c.sw, c.sx);
  } catch (const Error& e) {
    return Status::error(e.what());
  }
  const float alpha = 1.0f, beta = c.residual ? 1.0f : 0.0f;
  const void* cmat = c.residual ? static_cast<const void*>(c.residual) : static_cast<const void*>(c.y);
  const cublasStatus_t s = cublasLtMatmul(im.lt, im.desc, &alpha, c.w, im.la, c.x, im.lb, &beta, cmat, im.ld, c.y,
                                          im.ld, &im.algo[b], workspace, workspace_bytes_, stream);
  if (s != CUBLAS_STATUS_SUCCESS)
    return Status::error(std::string("fp8_gemm: cublasLtMatmul: ") + lt_status(s) + " (" + std::to_string(int(s)) +
                         ") m=" + std::to_string(c.m) + " n=" + std::to_string(n_) + " k=" + std::to_string(k_));
  return Status::ok();
}

}  // namespace qs::cuda
