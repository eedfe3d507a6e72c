// GEMM benchmark (issue 4): our W4A8 per-channel, W4A8 g128 and W8A8 kernels against cuBLAS FP16 (GemmEx),
// cuBLASLt INT8 (s8 x s8 -> s32) and cuBLASLt FP8 (e4m3 x e4m3 -> f16) on the Llama-3-8B and Llama-2-70B linear
// shapes, all in one run; plus the FP8 baseline's own binding (backends/cuda/fp8_gemm: per-token x per-channel
// outer-vector scales, the FP8 engine path) as "FP8 rw". Timing: each kernel's launches rotate over enough copies of its operands (>= 160 MB)
// that L2 (50 MB) is cold, captured in a CUDA graph (no launch gaps), replayed; the median over replays of the
// time per launch. Inputs are random (never zeros). Prints a table and writes gemm.json + gemm.md to the folder
// given as argv[1] (default "."), with issue 11's summary (the four linears of a Llama-3-8B / Llama-2-70B layer
// summed per M, ratios to cuBLASLt FP8). Our kernels run with their weights' TMA descriptors prepared once
// (qgemm_prepare, as the engine does at upload). Correctness of our kernels is the job of
// tests/backends/gemm_w4a8_gpu_test. Then the gate_up + SiLU*up + quantization pair, separate kernels vs the
// SiLU*up epilogue (gemm_silu.md).
// Every launch is timed in isolation, as cuBLASLt's are; --pdl launches our kernels with programmatic dependent
// launch (kernels/common/pdl.h, off by default): each launch of the replayed graph may then start while the
// previous one finishes (GEMMs back to back).
//   bench_gemm [out_dir] [--quick] [--fast] [--ms 64,128,...] [--sweep | --sweep-only] [--sweep-g128]
//     [--sweep-70b] [--probe] [--pdl] [--tune]
//   --fast: only W4A8 pc / g128, cuBLASLt FP8 and the FP8 engine path; --sweep: last, every sm90 config x split
//   (1, 2, 4, 8; cluster and global workspace) and stream-K on four shapes at M 64-512 (or --ms) with the plan's
//   cost estimate (gemm_sweep.md); --sweep-only: that sweep alone; --sweep-g128: the sweep on g128 weights;
//   --sweep-70b: on the four Llama-2-70B shapes instead of Llama-3-8B's; --tune: also each W4A8 cell with the plan
//   qgemm_tune measures (the engine's start-up tuning) and a summary of model vs measured plans;
//   --probe: only the main-loop probe (run_probe), its launches in the default raster order or --probe-raster R;
//   --probe-g128: what g128 costs over per-channel
//   (run_probe_g128); --raster: only the launch-order comparison
//   (run_raster: the plan with every raster group size, cuBLASLt FP8 in the same rows; gemm_raster.md).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backends/cuda/fp8_gemm.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"
#include "kernels/common/tensor_map.h"
#include "kernels/gemm_w4a8/qgemm.h"
#include "kernels/gemm_w4a8/qgemm_sm90.cuh"
#include "kernels/gemm_w4a8/qgemm_tune.h"
#include "kernels/norm_quant/norm_quant.h"

namespace {

int g_probe_raster = 0;  // --probe-raster: the probe launches' raster group (0 = the plan's rule, qgemm_raster_m)
// The linears of a Llama-3-8B layer (qkv, o, gate_up, down) then of a Llama-2-70B layer: {N, K}.
constexpr int kLayerShapes[8][2] = {{6144, 4096},  {4096, 4096},  {28672, 4096}, {4096, 14336},
                                    {10240, 8192}, {8192, 8192}, {57344, 8192}, {8192, 28672}};

#define CK(x) QS_CUDA_CHECK(x)
#define CKB(x)                                                                                   \
  do {                                                                                           \
    cublasStatus_t _s = (x);                                                                     \
    if (_s != CUBLAS_STATUS_SUCCESS) {                                                           \
      std::fprintf(stderr, "%s failed: %d (line %d)\n", #x, int(_s), __LINE__);                  \
      return -1.0;                                                                               \
    }                                                                                            \
  } while (0)

__device__ uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// kind 0: random bytes; 1: int8 in [-127, 127]; 2: fp16 in [lo, hi]; 3: fp8 e4m3 in [-1, 1];
// 4: g128 (s2 | zn << 8) pairs inside the protective range.
__global__ void fill_kernel(void* p, size_t n, int kind, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint64_t r = mix(seed * 0x100000001b3ull + i);
    switch (kind) {
      case 0: static_cast<uint8_t*>(p)[i] = uint8_t(r); break;
      case 1: static_cast<int8_t*>(p)[i] = int8_t(int(r % 255) - 127); break;
      case 2: static_cast<__half*>(p)[i] = __float2half(lo + (hi - lo) * float(r >> 40) * (1.0f / 16777216.0f)); break;
      case 3: {
        const float v = -1.0f + 2.0f * float(r >> 40) * (1.0f / 16777216.0f);
        static_cast<__nv_fp8_e4m3*>(p)[i] = __nv_fp8_e4m3(v);
        break;
      }
      case 4: {
        const int s2 = 1 + int(r % 16);
        const int zlo = max(0, 15 - 127 / s2), zhi = min(15, 128 / s2);
        const int z = zlo + int((r >> 8) % uint64_t(zhi - zlo + 1));
        static_cast<uint16_t*>(p)[i] = uint16_t(s2 | (uint8_t(int8_t(-z * s2)) << 8));
        break;
      }
    }
  }
}

void fill(void* p, size_t n, int kind, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  fill_kernel<<<2048, 256>>>(p, n, kind, seed, lo, hi);
  CK(cudaGetLastError());
}

void* dmalloc(size_t bytes) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
  return p;
}

struct Pool {  // frees everything at scope exit
  std::vector<void*> ptrs;
  void* get(size_t bytes) {
    ptrs.push_back(dmalloc(bytes));
    return ptrs.back();
  }
  ~Pool() {
    for (void* p : ptrs) cudaFree(p);
  }
};

constexpr size_t kRotateBytes = 160ull << 20;
int copies_for(size_t bytes_per_copy) {
  return int(std::clamp<size_t>((kRotateBytes + bytes_per_copy - 1) / bytes_per_copy, 1, 64));
}

// "bn256_bm128 x2", "bn128_bm64 sk132", with " r16" for a raster group.
std::string plan_name(const qs::kernels::QGemmPlan& plan) {
  return std::string(qs::kernels::qgemm_config_name(plan.config)) +
         (plan.stream_k_ctas > 0 ? " sk" + std::to_string(plan.stream_k_ctas)
                                 : " x" + std::to_string(plan.splits) + (plan.global_split ? "g" : "")) +
         (plan.raster_m > 1 ? " r" + std::to_string(plan.raster_m) : "");
}

// Times `launch(i)` for i = 0..copies-1 captured in one graph: median over replays of time per launch, in us.
template <typename F>
double time_graph(cudaStream_t s, int copies, F&& launch, int replays = 15) {
  for (int i = 0; i < copies; ++i)  // warm-up outside the graph (module load, heuristics)
    if (!launch(i)) return -1.0;
  CK(cudaStreamSynchronize(s));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  bool ok = true;
  for (int i = 0; i < copies; ++i) ok = ok && launch(i);
  CK(cudaStreamEndCapture(s, &g));
  if (!ok) {
    cudaGraphDestroy(g);
    return -1.0;
  }
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaGraphLaunch(ge, s));
  std::vector<float> t;
  for (int r = 0; r < replays; ++r) {
    CK(cudaEventRecord(e0, s));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms * 1000.0f / copies);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return t[t.size() / 2];
}

struct Ctx {
  cudaStream_t s;
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  void* ws;
  size_t ws_bytes = 64ull << 20;
  int sms;
  int sm_version;
};

// Our kernel on (m, n, k) with the plan for `sm_version`, or with `forced` (config >= 0) when given. The weights'
// TMA descriptors are prepared once per weight copy (qgemm_prepare, as at engine upload); each call encodes only
// the activation descriptor.
// `epi` selects the epilogue (kSiluMul: y is [m, n/2]); `post(y)`, when given, is launched after each GEMM in the
// timed graph (the activation kernel that follows it in a layer) and counted in the time; `launch`, when given,
// replaces qgemm_run (the probe's direct kernel launches).
using Launch = std::function<bool(const qs::kernels::QGemmParams&, const qs::kernels::QGemmPrepared&)>;
qs::kernels::QGemmPlan g_last_plan;  // the plan the last bench_ours(..., tune = true) measured
double bench_ours(Ctx& c, qs::WeightFormat v, int m, int n, int k, int sm_version,
                  qs::kernels::QGemmPlan forced = {-1, 1, 0},
                  qs::kernels::QGemmEpilogue epi = qs::kernels::QGemmEpilogue::kLinear,
                  const std::function<bool(const uint16_t*)>& post = {}, const Launch& launch = {},
                  bool tune = false) {
  Pool pool;
  const size_t wbytes = v == qs::WeightFormat::kW8A8 ? size_t(n) * k : size_t(n) * k / 2;
  const size_t sbytes = v == qs::WeightFormat::kW4A8G128 ? size_t(n) * (k / 128) * 2 : 0;
  const int copies = copies_for(wbytes + sbytes + size_t(m) * k);
  std::vector<qs::kernels::QGemmParams> ps(static_cast<size_t>(copies));
  qs::kernels::QGemmPlan plan =
      forced.config >= 0 ? forced : qs::kernels::qgemm_plan(v, m, n, k, c.sms, sm_version);
  tune = tune && forced.config < 0 && !launch;
  std::vector<qs::kernels::QGemmPrepared> preps(static_cast<size_t>(copies));
  // --tune: one workspace for every candidate the tuner times (at most 1 GiB; candidates needing more are skipped).
  const size_t tune_ws =
      tune ? std::min(qs::kernels::qgemm_tune_workspace_bytes(v, m, n, k, c.sms, sm_version), size_t(1) << 30) : 0;
  const size_t ws_bytes = std::max(plan.workspace_bytes, tune_ws);
  void* ws = ws_bytes ? pool.get(ws_bytes) : nullptr;
  if (ws) CK(cudaMemset(ws, 0, ws_bytes));  // split-K counters start (and stay) zero
  auto* scale = static_cast<uint16_t*>(pool.get(size_t(n) * 2));
  auto* szero = static_cast<uint16_t*>(pool.get(size_t(n) * 2));
  auto* sx = static_cast<uint16_t*>(pool.get(size_t(m) * 2));
  auto* xsum = static_cast<uint16_t*>(pool.get(size_t(m) * 2));
  auto* qsum = static_cast<int32_t*>(pool.get(size_t(m) * 4));
  auto* y = static_cast<uint16_t*>(pool.get(size_t(m) * n * 2));
  CK(cudaMemset(qsum, 0, size_t(m) * 4));  // g128's code sums (the timing does not depend on the values)
  fill(scale, n, 2, 1, 1e-3f, 2e-3f);
  fill(szero, n, 2, 2, 0.0f, 1e-2f);
  fill(sx, m, 2, 3, 1e-3f, 2e-2f);
  fill(xsum, m, 2, 4, -1.0f, 1.0f);
  for (int i = 0; i < copies; ++i) {
    auto& p = ps[size_t(i)];
    p.variant = v;
    p.m = m;
    p.n = n;
    p.k = k;
    void* w = pool.get(wbytes);
    fill(w, wbytes, 0, 10 + i);
    auto* x = static_cast<int8_t*>(pool.get(size_t(m) * k));
    fill(x, size_t(m) * k, 1, 100 + i);
    p.w = w;
    p.x = x;
    if (sbytes) {
      auto* s2zn = static_cast<uint16_t*>(pool.get(sbytes));
      fill(s2zn, sbytes / 2, 4, 200 + i);
      p.s2zn = s2zn;
    }
    p.sx = sx;
    p.xsum = xsum;
    p.qsum = qsum;
    p.scale = scale;
    p.szero = szero;
    p.y = y;
    p.epilogue = epi;
    p.workspace = ws;
    const qs::Status st = qs::kernels::qgemm_prepare(p, &preps[size_t(i)]);
    if (!st.is_ok()) {
      std::fprintf(stderr, "qgemm_prepare: %s\n", st.message().c_str());
      return -1.0;
    }
  }
  if (tune) {
    std::vector<const qs::kernels::QGemmPrepared*> pp;
    for (const auto& pr : preps) pp.push_back(&pr);
    qs::kernels::QGemmTuneResult r;
    const qs::Status st = qs::kernels::qgemm_tune(ps, pp, c.s, ws, ws_bytes, {}, &r);
    if (!st.is_ok()) {
      std::fprintf(stderr, "qgemm_tune: %s\n", st.message().c_str());
      return -1.0;
    }
    plan = r.plan;
    g_last_plan = plan;
    std::printf("tune %-9s %6d %6d %5d: model %-24s %8.1f us -> %-26s %8.1f us (%d candidates)\n",
                qs::weight_format_name(v), n, k, m, plan_name(r.model_plan).c_str(), r.model_us,
                plan_name(r.plan).c_str(), r.us, r.candidates);
  }
  const double t = time_graph(c.s, copies, [&](int i) {
    if (launch) return launch(ps[size_t(i)], preps[size_t(i)]) && (!post || post(y));
    const qs::Status st = qs::kernels::qgemm_run(ps[size_t(i)], plan, c.s, &preps[size_t(i)]);
    if (!st.is_ok()) std::fprintf(stderr, "qgemm_run: %s\n", st.message().c_str());
    return st.is_ok() && (!post || post(y));
  });
  if (tune) std::printf("%*s bench: %8.1f us\n", 100, "", t);
  return t;
}

double bench_cublas_fp16(Ctx& c, int m, int n, int k) {
  Pool pool;
  const int copies = copies_for(size_t(n) * k * 2 + size_t(m) * k * 2);
  std::vector<void*> w(static_cast<size_t>(copies)), x(static_cast<size_t>(copies));
  for (int i = 0; i < copies; ++i) {
    w[size_t(i)] = pool.get(size_t(n) * k * 2);
    x[size_t(i)] = pool.get(size_t(m) * k * 2);
    fill(w[size_t(i)], size_t(n) * k, 2, 300 + i, -0.05f, 0.05f);
    fill(x[size_t(i)], size_t(m) * k, 2, 400 + i, -1.0f, 1.0f);
  }
  void* y = pool.get(size_t(m) * n * 2);
  const float alpha = 1.0f, beta = 0.0f;
  return time_graph(c.s, copies, [&](int i) {
    return cublasGemmEx(c.blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w[size_t(i)], CUDA_R_16F, k,
                        x[size_t(i)], CUDA_R_16F, k, &beta, y, CUDA_R_16F, n, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
  });
}

// cuBLASLt TN GEMM: D[n x m] (col-major, = Y[m, n] row-major) = W^T X. int8: s8 x s8 -> s32 (compute 32I);
// fp8: e4m3 x e4m3 -> f16 (compute 32F).
double bench_lt(Ctx& c, bool fp8, int m, int n, int k) {
  Pool pool;
  const int copies = copies_for(size_t(n) * k + size_t(m) * k);
  std::vector<void*> w(static_cast<size_t>(copies)), x(static_cast<size_t>(copies));
  for (int i = 0; i < copies; ++i) {
    w[size_t(i)] = pool.get(size_t(n) * k);
    x[size_t(i)] = pool.get(size_t(m) * k);
    fill(w[size_t(i)], size_t(n) * k, fp8 ? 3 : 1, 500 + i);
    fill(x[size_t(i)], size_t(m) * k, fp8 ? 3 : 1, 600 + i);
  }
  void* d = pool.get(size_t(m) * n * (fp8 ? 2 : 4));
  const cudaDataType_t ab = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_8I, dt = fp8 ? CUDA_R_16F : CUDA_R_32I;
  cublasLtMatmulDesc_t desc;
  CKB(cublasLtMatmulDescCreate(&desc, fp8 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32I, fp8 ? CUDA_R_32F : CUDA_R_32I));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CKB(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CKB(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtMatrixLayout_t la, lb, lc;
  CKB(cublasLtMatrixLayoutCreate(&la, ab, k, n, k));
  CKB(cublasLtMatrixLayoutCreate(&lb, ab, k, m, k));
  CKB(cublasLtMatrixLayoutCreate(&lc, dt, n, m, n));
  cublasLtMatmulPreference_t pref;
  CKB(cublasLtMatmulPreferenceCreate(&pref));
  CKB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c.ws_bytes,
                                           sizeof(c.ws_bytes)));
  cublasLtMatmulHeuristicResult_t heur;
  int found = 0;
  cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(c.lt, desc, la, lb, lc, lc, pref, 1, &heur, &found);
  double t = -1.0;
  if (hs == CUBLAS_STATUS_SUCCESS && found > 0) {
    const float fa = 1.0f, fb = 0.0f;
    const int32_t ia = 1, ib = 0;
    const void* alpha = fp8 ? static_cast<const void*>(&fa) : static_cast<const void*>(&ia);
    const void* beta = fp8 ? static_cast<const void*>(&fb) : static_cast<const void*>(&ib);
    t = time_graph(c.s, copies, [&](int i) {
      return cublasLtMatmul(c.lt, desc, alpha, w[size_t(i)], la, x[size_t(i)], lb, beta, d, lc, d, lc, &heur.algo,
                            c.ws, c.ws_bytes, c.s) == CUBLAS_STATUS_SUCCESS;
    });
  } else {
    std::fprintf(stderr, "cuBLASLt %s: no algorithm for m=%d n=%d k=%d\n", fp8 ? "fp8" : "int8", m, n, k);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  return t;
}

// The FP8 engine path: cuda::Fp8Gemm (cuBLASLt with per-token x per-channel outer-vector scales), planned for m.
double bench_fp8_rowwise(Ctx& c, int m, int n, int k) {
  Pool pool;
  const int copies = copies_for(size_t(n) * k + size_t(m) * k);
  std::vector<void*> w(static_cast<size_t>(copies)), x(static_cast<size_t>(copies));
  for (int i = 0; i < copies; ++i) {
    w[size_t(i)] = pool.get(size_t(n) * k);
    x[size_t(i)] = pool.get(size_t(m) * k);
    fill(w[size_t(i)], size_t(n) * k, 3, 700 + i);
    fill(x[size_t(i)], size_t(m) * k, 3, 800 + i);
  }
  auto* sx = static_cast<float*>(pool.get(size_t(m) * 4));
  auto* sw = static_cast<float*>(pool.get(size_t(n) * 4));
  std::vector<float> ones(size_t(std::max(m, n)), 1e-2f);
  CK(cudaMemcpy(sx, ones.data(), size_t(m) * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(sw, ones.data(), size_t(n) * 4, cudaMemcpyHostToDevice));
  auto* y = static_cast<uint16_t*>(pool.get(size_t(m) * n * 2));
  try {
    qs::cuda::Fp8Gemm g(n, k, m);
    void* ws = g.workspace_bytes() ? pool.get(g.workspace_bytes()) : nullptr;
    return time_graph(c.s, copies, [&](int i) {
      qs::cuda::Fp8GemmCall call;
      call.m = m;
      call.x = static_cast<const uint8_t*>(x[size_t(i)]);
      call.sx = sx;
      call.w = static_cast<const uint8_t*>(w[size_t(i)]);
      call.sw = sw;
      call.y = y;
      const qs::Status st = g.run(call, ws, c.s);
      if (!st.is_ok()) std::fprintf(stderr, "%s\n", st.message().c_str());
      return st.is_ok();
    });
  } catch (const qs::Error& e) {
    std::fprintf(stderr, "fp8 rowwise: %s\n", e.what());
    return -1.0;
  }
}

double copy_bandwidth(Ctx& c) {
  Pool pool;
  const size_t bytes = 1ull << 30;
  void* a = pool.get(bytes);
  void* b = pool.get(bytes);
  fill(a, bytes, 0, 7);
  const double us = time_graph(c.s, 1, [&](int) { return cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, c.s) == cudaSuccess; });
  return 2.0 * bytes / (us * 1e-6) / 1e12;  // TB/s, read + write
}

// Issue 11's epilogue-fusion figure: the gate_up projection of a layer and its activation quantization, as the
// W4A8 engine ran them before (GEMM writing gate|up FP16 [m, 2I], then silu_mul_quant) and as it runs them now (the
// GEMM's SiLU*up epilogue writing FP16 [m, I] over interleaved gate/up rows, then act_quant), W4A8 per-channel,
// each pair timed as one unit in the graph (the activation kernel reads what the GEMM just wrote, as in a layer).
void run_silu_fusion(Ctx& c, const std::vector<int>& ms, const std::string& out_dir) {
  using qs::kernels::QGemmEpilogue;
  std::ofstream md(out_dir + "/gemm_silu.md");
  md << "| model | M | GEMM us | GEMM + silu_mul_quant us | SiLU-epilogue GEMM us | + act_quant us | separate / fused |\n"
     << "|---|---|---|---|---|---|---|\n";
  std::printf("\ngate_up + SiLU*up + INT8 quant (W4A8 pc): model M | gemm gemm+silu_mul_quant | silu_gemm "
              "silu_gemm+act_quant (us) | separate/fused\n");
  const int shapes[][2] = {{14336, 4096}, {28672, 8192}};  // I, H
  for (const auto& s : shapes) {
    const int inter = s[0], hidden = s[1];
    for (int m : ms) {
      Pool pool;
      qs::kernels::QuantOut o;
      o.q = static_cast<int8_t*>(pool.get(size_t(m) * inter));
      o.scale = static_cast<uint16_t*>(pool.get(size_t(m) * 2));
      o.xsum = static_cast<uint16_t*>(pool.get(size_t(m) * 2));
      auto silu_quant = [&](const uint16_t* y) {
        qs::kernels::SiluMulQuantParams p;
        p.gate_up = y;
        p.rows = m;
        p.cols = inter;
        p.out = o;
        return qs::kernels::silu_mul_quant(p, c.s).is_ok();
      };
      auto act_quant = [&](const uint16_t* y) {
        qs::kernels::ActQuantParams p;
        p.x = y;
        p.rows = m;
        p.cols = inter;
        p.out = o;
        return qs::kernels::act_quant(p, c.s).is_ok();
      };
      const auto pc = qs::WeightFormat::kW4A8PerChannel;
      const qs::kernels::QGemmPlan plan = {-1, 1, 0};
      const double t_gemm = bench_ours(c, pc, m, 2 * inter, hidden, c.sm_version);
      const double t_sep = bench_ours(c, pc, m, 2 * inter, hidden, c.sm_version, plan, QGemmEpilogue::kLinear, silu_quant);
      const double t_fgemm = bench_ours(c, pc, m, 2 * inter, hidden, c.sm_version, plan, QGemmEpilogue::kSiluMul);
      const double t_fused = bench_ours(c, pc, m, 2 * inter, hidden, c.sm_version, plan, QGemmEpilogue::kSiluMul, act_quant);
      const char* name = hidden == 4096 ? "llama-3-8b" : "llama-2-70b";
      std::printf("%-11s %5d | %8.1f %8.1f | %8.1f %8.1f | %5.2f\n", name, m, t_gemm, t_sep, t_fgemm, t_fused,
                  t_sep / t_fused);
      std::fflush(stdout);
      md << "| " << name << " | " << m << " | " << t_gemm << " | " << t_sep << " | " << t_fgemm << " | " << t_fused
         << " | " << t_sep / t_fused << " |\n";
    }
  }
}

// --probe: the per-channel sm90 kernel with parts of its main loop removed (qgemm_sm90_kernel's PROBE: 1 no MMAs,
// 2 no fragment loads / dequantization, 3 neither, 4 neither with contiguous weight boxes, 5 MMAs only without TMA,
// 6 no weight TMA, 7 MMAs back to back without waits), unsplit, on gate_up / qkv / down at M 64-512 (or --ms) for the configs
// the plan picks there: which part bounds the k-tile rate. Outputs are garbage (timing only).
template <int PROBE, int CONFIG, int V = 0>
bool launch_probe(Ctx& c, const qs::kernels::QGemmParams& p, const qs::kernels::QGemmPrepared& prep) {
  using namespace qs::kernels::qgemm_detail;
  using C = Sm90Cfg<V, CONFIG>;
  static bool attr = false;
  if (!attr) {
    CK(cudaFuncSetAttribute(qgemm_sm90_kernel<V, CONFIG, false, PROBE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            C::kSmemBytes));
    attr = true;
  }
  CUtensorMap xmap, wflat = prep.wmap[CONFIG];
  if (!make_sm90_x_map(p, C::BM, &xmap).is_ok()) return false;
  if constexpr (PROBE == 4) {  // the weights as rows of one 1 KB tile (u64 words), boxes of BN/16 rows
    const uint64_t dims[2] = {128, uint64_t(p.n / 16) * uint64_t(p.k / kBK)}, stride = 1024;
    const uint32_t box[2] = {128, uint32_t(C::BN / 16)};
    if (!qs::kernels::encode_tensor_map(&wflat, CU_TENSOR_MAP_DATA_TYPE_UINT64, 2, p.w, dims, &stride, box,
                                        CU_TENSOR_MAP_SWIZZLE_NONE, "probe").is_ok())
      return false;
  }
  const dim3 grid(((p.n + C::BN - 1) / C::BN) * ((p.m + C::BM - 1) / C::BM), 1, 1);
  qgemm_sm90_kernel<V, CONFIG, false, PROBE><<<grid, C::kThreads, C::kSmemBytes, c.s>>>(
      p, xmap, wflat, prep.smap[CONFIG], p.k / kBK, nullptr, nullptr, 0,
      g_probe_raster > 0 ? g_probe_raster : qs::kernels::qgemm_raster_m(CONFIG, p.m, p.n, c.sms), 0);
  return cudaGetLastError() == cudaSuccess;
}

template <int CONFIG>
double bench_probe(Ctx& c, int probe, int m, int n, int k) {
  const auto v = qs::WeightFormat::kW4A8PerChannel;
  return bench_ours(c, v, m, n, k, c.sm_version, qs::kernels::qgemm_plan_for(v, m, n, k, CONFIG, 1),
                    qs::kernels::QGemmEpilogue::kLinear, {},
                    [&](const qs::kernels::QGemmParams& p, const qs::kernels::QGemmPrepared& pr) {
                      switch (probe) {
                        case 0: return launch_probe<0, CONFIG>(c, p, pr);
                        case 1: return launch_probe<1, CONFIG>(c, p, pr);
                        case 2: return launch_probe<2, CONFIG>(c, p, pr);
                        case 3: return launch_probe<3, CONFIG>(c, p, pr);
                        case 4: return launch_probe<4, CONFIG>(c, p, pr);
                        case 5: return launch_probe<5, CONFIG>(c, p, pr);
                        case 6: return launch_probe<6, CONFIG>(c, p, pr);
                        default: return launch_probe<7, CONFIG>(c, p, pr);
                      }
                    });
}

// Calls f.template operator()<CONFIG>() with `cfg` as a compile-time config (every sm90 line of qgemm_configs.def).
template <class F>
void with_sm90_config(int cfg, F&& f) {
  switch (cfg) {
#define QS_QGEMM_SM80(name, bn, bm, wn, wm)
#define QS_QGEMM_SM90(name, bm, mt)                                  \
  case qs::kernels::kQGemm_##name:                                   \
    f.template operator()<qs::kernels::kQGemm_##name>();             \
    break;
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90
    default:
      std::fprintf(stderr, "not an sm90 config: %d\n", cfg);
      std::exit(1);
  }
}

// --probe-g128: what g128 costs over per-channel on the same config (the g128 plan's pick, unsplit), Llama-3-8B's four
// linears: per-channel, g128, g128 with the per-channel fragment path (PROBE 8: the ring with the group scales, no
// dequant math), g128 without the group scales' TMA (PROBE 9) and both formats without fragment loads (PROBE 2).
// Outputs of the probes are garbage (timing only).
template <int CONFIG>
void probe_g128_row(Ctx& c, int m, int n, int k) {
  const auto pc = qs::WeightFormat::kW4A8PerChannel, g = qs::WeightFormat::kW4A8G128;
  const auto plan_pc = qs::kernels::qgemm_plan_for(pc, m, n, k, CONFIG, 1);
  const auto plan_g = qs::kernels::qgemm_plan_for(g, m, n, k, CONFIG, 1);
  const auto ep = qs::kernels::QGemmEpilogue::kLinear;
  auto probe = [&](qs::WeightFormat v, const qs::kernels::QGemmPlan& plan, auto launch) {
    return bench_ours(c, v, m, n, k, c.sm_version, plan, ep, {}, launch);
  };
  using P = qs::kernels::QGemmParams;
  using R = qs::kernels::QGemmPrepared;
  const double t_pc = probe(pc, plan_pc, [&](const P& p, const R& r) { return launch_probe<0, CONFIG, 0>(c, p, r); });
  const double t_g = probe(g, plan_g, [&](const P& p, const R& r) { return launch_probe<0, CONFIG, 1>(c, p, r); });
  const double t_g8 = probe(g, plan_g, [&](const P& p, const R& r) { return launch_probe<8, CONFIG, 1>(c, p, r); });
  const double t_g9 = probe(g, plan_g, [&](const P& p, const R& r) { return launch_probe<9, CONFIG, 1>(c, p, r); });
  const double t_pc2 = probe(pc, plan_pc, [&](const P& p, const R& r) { return launch_probe<2, CONFIG, 0>(c, p, r); });
  const double t_g2 = probe(g, plan_g, [&](const P& p, const R& r) { return launch_probe<2, CONFIG, 1>(c, p, r); });
  std::printf("%6d %6d %5d %-18s | %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f | %5.3f %5.3f %5.3f %5.3f\n", n, k, m,
              qs::kernels::qgemm_config_name(CONFIG), t_pc, t_g, t_g8, t_g9, t_pc2, t_g2, t_g / t_pc, t_g8 / t_pc,
              t_g9 / t_pc, t_g2 / t_pc2);
  std::fflush(stdout);
}

void run_probe_g128(Ctx& c, const std::vector<int>& ms) {
  using namespace qs::kernels;
  std::printf("\nprobe-g128 (unsplit, the g128 plan's config): N K M config | pc g128 g128_pc_frags "
              "g128_no_scale_tma pc_no_frag g128_no_frag (us) | g128/pc g128_pc_frags/pc g128_no_scale_tma/pc "
              "g128_no_frag/pc_no_frag\n");
  for (int i = 0; i < 4; ++i)
    for (int m : ms) {
      const int* s = kLayerShapes[i];
      const int cfg = qgemm_plan(qs::WeightFormat::kW4A8G128, m, s[0], s[1], c.sms, c.sm_version).config;
      with_sm90_config(cfg, [&]<int CONFIG>() { probe_g128_row<CONFIG>(c, m, s[0], s[1]); });
    }
}

void run_probe(Ctx& c, const std::vector<int>& ms) {
  using namespace qs::kernels;
  std::printf("\nprobe (W4A8 pc, unsplit): N K M config | full no_mma no_frag neither neither_contiguous_w mma_only "
              "no_w_load mma_peak (us) | weight TB/s of full, no_mma, no_frag, neither, neither_contiguous_w\n");
  const int shapes[][2] = {{28672, 4096}, {6144, 4096}, {4096, 14336}};
  for (const auto& s : shapes)
    for (int m : ms)
      for (int cfg : {int(kQGemm_sm90_bn256_bm64), int(kQGemm_sm90_bn128_bm64), int(kQGemm_sm90_bn128_bm128),
                      int(kQGemm_sm90_bn256_bm128)}) {
        double t[8];
        for (int pr = 0; pr < 8; ++pr)
          with_sm90_config(cfg, [&]<int CONFIG>() { t[pr] = bench_probe<CONFIG>(c, pr, m, s[0], s[1]); });
        const double wb = double(s[0]) * s[1] / 2 / 1e6;  // MB -> TB/s with us
        std::printf("%6d %6d %4d %-18s | %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f | %5.2f %5.2f %5.2f %5.2f %5.2f\n",
                    s[0], s[1], m, qgemm_config_name(cfg), t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], wb / t[0],
                    wb / t[1], wb / t[2], wb / t[3], wb / t[4]);
        std::fflush(stdout);
      }
}

// --raster: the plan of each Llama-3-8B / Llama-2-70B linear at each M launched with raster groups of 1 (weight
// tiles fastest), 2, 4, ... token tiles and all of them (token tiles fastest), and the default (qgemm_raster_m),
// cuBLASLt FP8 in the same row; then the four linears summed per model and M for raster 1, the default and FP8.
void run_raster(Ctx& c, const std::string& out_dir, const std::vector<int>& ms) {
  using namespace qs::kernels;
  const auto v = qs::WeightFormat::kW4A8PerChannel;
  std::ofstream md(out_dir + "/gemm_raster.md");
  md << "| N | K | M | plan | Lt FP8 us | raster: us ... | default raster | default us | FP8 / default |\n"
     << "|---|---|---|---|---|---|---|---|---|\n";
  std::printf("raster (W4A8 pc, the plan's config and split): N K M plan | fp8 us | raster:us ... | default "
              "raster us | fp8/default raster1/default\n");
  std::map<int, std::array<double, 3>> sums[2];  // raster 1, default, fp8
  for (const auto& s : kLayerShapes)
    for (int m : ms) {
      QGemmPlan plan = qgemm_plan(v, m, s[0], s[1], c.sms, c.sm_version);
      if (!qgemm_config_is_sm90(plan.config)) continue;
      const int tiles_m = (m + kQGemmConfigs[plan.config].bm - 1) / kQGemmConfigs[plan.config].bm;
      const int def = plan.raster_m;
      std::vector<int> rs = {def, tiles_m};
      for (int r = 1; r < tiles_m; r *= 2) rs.push_back(r);
      std::sort(rs.begin(), rs.end());
      rs.erase(std::unique(rs.begin(), rs.end()), rs.end());
      const double fp8 = bench_lt(c, true, m, s[0], s[1]);
      std::printf("%6d %6d %5d %-16s x%d%s | %7.1f |", s[0], s[1], m, qgemm_config_name(plan.config), plan.splits,
                  plan.stream_k_ctas > 0 ? "sk" : "", fp8);
      md << "| " << s[0] << " | " << s[1] << " | " << m << " | " << qgemm_config_name(plan.config) << " x"
         << plan.splits << " | " << fp8 << " | ";
      double t1 = 0, tdef = 0;
      for (int r : rs) {
        plan.raster_m = r;
        const double t = bench_ours(c, v, m, s[0], s[1], c.sm_version, plan);
        if (r == 1) t1 = t;
        if (r == def) tdef = t;
        std::printf(" %d:%.1f", r, t);
        md << r << ": " << t << " ";
      }
      std::printf(" | %d %7.1f | %5.2f %5.2f\n", def, tdef, fp8 / tdef, t1 / tdef);
      md << "| " << def << " | " << tdef << " | " << fp8 / tdef << " |\n";
      std::fflush(stdout);
      auto& sum = sums[(&s - &kLayerShapes[0]) < 4 ? 0 : 1][m];
      sum[0] += t1, sum[1] += tdef, sum[2] += fp8;
    }
  std::printf("\nraster, layer linears summed: model M | raster1 default fp8 (us) | fp8/raster1 fp8/default\n");
  md << "\n| model | M | raster 1 us | default us | Lt FP8 us | FP8/raster 1 | FP8/default |\n|---|---|---|---|---|---|---|\n";
  for (int model = 0; model < 2; ++model)
    for (const auto& [m, sum] : sums[model]) {
      const char* name = model == 0 ? "llama-3-8b" : "llama-2-70b";
      std::printf("%-11s %5d | %8.1f %8.1f %8.1f | %5.2f %5.2f\n", name, m, sum[0], sum[1], sum[2], sum[2] / sum[0],
                  sum[2] / sum[1]);
      md << "| " << name << " | " << m << " | " << sum[0] << " | " << sum[1] << " | " << sum[2] << " | "
         << sum[2] / sum[0] << " | " << sum[2] / sum[1] << " |\n";
    }
  std::fflush(stdout);
}

// --sweep: every sm90 config x split-K factor on a few shapes of the M 64-512 regime (W4A8 per-channel, or g128
// with --sweep-g128), with the plan's cost-model estimate and its choice marked, so the model can be checked against
// the hardware. At M > 512 (--ms) only the unsplit launch and stream-K over one CTA per SM (the tiles fill the
// machine there).
void run_sweep(Ctx& c, const std::string& out_dir, const std::vector<int>& ms, qs::WeightFormat v, bool llama70b) {
  std::ofstream md(out_dir + "/gemm_sweep.md");
  md << "| N | K | M | config | splits | us | model us | plan |\n|---|---|---|---|---|---|---|---|\n";
  std::printf("sweep (W4A8 %s): N K M config splits | us model_us plan\n", qs::weight_format_name(v));
  const std::vector<std::array<int, 2>> shapes =
      llama70b ? std::vector<std::array<int, 2>>{{10240, 8192}, {8192, 8192}, {57344, 8192}, {8192, 28672}}
               : std::vector<std::array<int, 2>>{{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
  for (const auto& s : shapes)
    for (int m : ms) {
      const auto chosen = qs::kernels::qgemm_plan(v, m, s[0], s[1], c.sms, c.sm_version);
      for (int cfg = 0; cfg < qs::kernels::qgemm_num_configs(); ++cfg) {
        if (!qs::kernels::qgemm_config_is_sm90(cfg)) continue;
        // splits 0 = stream-K over one CTA per SM; 1, 2, 4, 8 = split-K (c: cluster, g: global workspace).
        for (int sp : {0, 1, 2, 4, 8})
          for (bool global : {false, true}) {
          if ((sp <= 1 && global) || (m > 512 && sp > 1)) continue;
          const auto plan = sp == 0 ? qs::kernels::qgemm_plan_stream_k(v, m, s[0], s[1], cfg, c.sms)
                                    : qs::kernels::qgemm_plan_for(v, m, s[0], s[1], cfg, sp, global);
          if (sp > 0 && plan.splits != sp) continue;
          const double t = bench_ours(c, v, m, s[0], s[1], c.sm_version, plan);
          const double est = qs::kernels::qgemm_plan_cost_us(v, plan, m, s[0], s[1], c.sms);
          const bool is_plan = plan.config == chosen.config && plan.splits == chosen.splits &&
                               plan.global_split == chosen.global_split && plan.stream_k_ctas == chosen.stream_k_ctas;
          const char* mode = sp == 0 ? "sk" : sp == 1 ? "" : global ? "g" : "c";
          std::printf("%6d %6d %4d %-18s %d%-2s | %7.1f %7.1f %s\n", s[0], s[1], m, qs::kernels::qgemm_config_name(cfg), sp,
                      mode, t, est, is_plan ? "<- plan" : "");
          md << "| " << s[0] << " | " << s[1] << " | " << m << " | " << qs::kernels::qgemm_config_name(cfg) << " | "
             << (sp == 0 ? "stream-K" : std::to_string(sp) + (sp == 1 ? "" : global ? " global" : " cluster")) << " | "
             << t << " | " << est << " | " << (is_plan ? "plan" : "") << " |\n";
          }
      }
      if (!qs::kernels::qgemm_config_is_sm90(chosen.config) || (chosen.stream_k_ctas > 0 && chosen.stream_k_ctas != c.sms) ||
          (chosen.splits != 1 && chosen.splits != 2 && chosen.splits != 4 && chosen.splits != 8)) {
        const double t = bench_ours(c, v, m, s[0], s[1], c.sm_version);
        std::printf("%6d %6d %4d %-18s %d | %7.1f %7s <- plan\n", s[0], s[1], m,
                    qs::kernels::qgemm_config_name(chosen.config), chosen.splits, t, "");
        md << "| " << s[0] << " | " << s[1] << " | " << m << " | " << qs::kernels::qgemm_config_name(chosen.config)
           << " | " << chosen.splits << " | " << t << " | | plan |\n";
      }
      std::fflush(stdout);
    }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out_dir = argc > 1 && argv[1][0] != '-' ? argv[1] : ".";
  bool quick = false, fast = false, sweep = false, sweep_only = false, probe = false, raster = false;
  bool probe_g128 = false, sweep_g128 = false, sweep_70b = false, tune = false;
  std::vector<int> ms_arg;
  bool pdl = false;
  for (int i = 1; i < argc; ++i) pdl = pdl || std::string(argv[i]) == "--pdl";
  qs::kernels::set_pdl_enabled(pdl);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    quick = quick || a == "--quick";
    fast = fast || a == "--fast";
    sweep = sweep || a == "--sweep";
    sweep_only = sweep_only || a == "--sweep-only";
    probe = probe || a == "--probe";
    probe_g128 = probe_g128 || a == "--probe-g128";
    sweep_g128 = sweep_g128 || a == "--sweep-g128";
    sweep_70b = sweep_70b || a == "--sweep-70b";
    raster = raster || a == "--raster";
    tune = tune || a == "--tune";
    if (a == "--probe-raster" && i + 1 < argc) g_probe_raster = std::stoi(argv[++i]);
    if (a == "--ms" && i + 1 < argc) {
      std::string list = argv[++i];
      for (size_t pos = 0; pos <= list.size();) {
        const size_t e = std::min(list.find(',', pos), list.size());
        if (e > pos) ms_arg.push_back(std::stoi(list.substr(pos, e - pos)));
        pos = e + 1;
      }
    }
  }
  Ctx c;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  c.sms = prop.multiProcessorCount;
  c.sm_version = prop.major * 10 + prop.minor;
  CK(cudaStreamCreate(&c.s));
  if (cublasCreate(&c.blas) != CUBLAS_STATUS_SUCCESS || cublasLtCreate(&c.lt) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS init failed\n");
    return 1;
  }
  CK(cudaMalloc(&c.ws, c.ws_bytes));
  cublasSetStream(c.blas, c.s);
  cublasSetWorkspace(c.blas, c.ws, c.ws_bytes);
  const double bw = copy_bandwidth(c);
  std::printf("device: %s, %d SMs; copy bandwidth %.2f TB/s\n", prop.name, c.sms, bw);
  if (probe_g128) {
    run_probe_g128(c, ms_arg.empty() ? std::vector<int>{64, 128, 256, 512, 1024, 2048} : ms_arg);
    return 0;
  }
  if (probe) {
    run_probe(c, ms_arg.empty() ? std::vector<int>{64, 128, 256, 512} : ms_arg);
    return 0;
  }
  if (raster) {
    run_raster(c, out_dir, ms_arg.empty() ? std::vector<int>{256, 512, 1024, 4096, 8192} : ms_arg);
    return 0;
  }
  const std::vector<int> sweep_ms = ms_arg.empty() ? std::vector<int>{64, 128, 256, 512} : ms_arg;
  const auto sweep_v = sweep_g128 ? qs::WeightFormat::kW4A8G128 : qs::WeightFormat::kW4A8PerChannel;
  if (sweep_only) {
    run_sweep(c, out_dir, sweep_ms, sweep_v, sweep_70b);
    return 0;
  }

  const auto& shapes = kLayerShapes;
  std::vector<int> ms = {1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  if (quick) ms = {1, 16, 64, 1024, 4096};
  if (!ms_arg.empty()) ms = ms_arg;
  std::ofstream js(out_dir + "/gemm.json"), md(out_dir + "/gemm.md");
  js << "{\"device\": \"" << prop.name << "\", \"copy_tbps\": " << bw << ", \"rows\": [\n";
  md << "Device: " << prop.name << " (" << c.sms << " SMs), copy bandwidth " << bw << " TB/s. Times in us (median, "
     << "cold L2, CUDA graph). TOP/s = 2MNK/t. W-BW = weight bytes / t (TB/s).\n\n"
     << "| N | K | M | W4A8 pc | W4A8 g128 | W8A8 | pc (sm80 kernel) | cuBLAS FP16 | Lt INT8 | Lt FP8 | FP8 rw | pc TOP/s | pc W-BW | FP16/pc | "
        "FP8/pc | pc/INT8 (TOP/s) | g128/pc (time) | W8A8 vs INT8 (speedup) |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::printf("%6s %6s %5s | %8s %8s %8s %8s | %8s %8s %8s %8s | %7s %6s | %6s %6s %6s %6s %6s\n", "N", "K", "M",
              "pc_us", "g128_us", "w8a8_us", "pc80_us", "fp16_us", "int8_us", "fp8_us", "f8rw_us", "pcTOPs", "pcWBW", "f16/pc", "f8/pc", "pc/i8",
              "g/pc", "w8/i8");
  bool first = true;
  struct Sum {
    double pc = 0, g128 = 0, fp8 = 0, fp8rw = 0;
    double pc_t = 0, g128_t = 0;  // --tune: with measured plans
    std::string plans, plans_t;
  };
  std::map<int, Sum> sums[2];
  for (const auto& s : shapes) {
    const int n = s[0], k = s[1];
    for (int m : ms) {
      const double t_pc = bench_ours(c, qs::WeightFormat::kW4A8PerChannel, m, n, k, c.sm_version);
      const double t_g = bench_ours(c, qs::WeightFormat::kW4A8G128, m, n, k, c.sm_version);
      // --fast: only what issue 11 compares (W4A8 pc / g128 vs cuBLASLt FP8 and the FP8 engine path); -1 = skipped.
      const double t_w8 = fast ? -1.0 : bench_ours(c, qs::WeightFormat::kW8A8, m, n, k, c.sm_version);
      const double t_pc80 =
          fast ? -1.0 : c.sm_version >= 90 ? bench_ours(c, qs::WeightFormat::kW4A8PerChannel, m, n, k, 80) : t_pc;
      const double t_16 = fast ? -1.0 : bench_cublas_fp16(c, m, n, k);
      const double t_i8 = fast ? -1.0 : bench_lt(c, false, m, n, k);
      const double t_f8 = bench_lt(c, true, m, n, k);
      const double t_f8rw = bench_fp8_rowwise(c, m, n, k);
      const double ops = 2.0 * m * double(n) * k;
      const double tops = ops / (t_pc * 1e-6) / 1e12;
      const double wbw = double(n) * k / 2 / (t_pc * 1e-6) / 1e12;
      std::printf(
          "%6d %6d %5d | %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f | %7.0f %6.2f | %6.2f %6.2f %6.2f %6.2f %6.2f\n", n,
          k, m, t_pc, t_g, t_w8, t_pc80, t_16, t_i8, t_f8, t_f8rw, tops, wbw, t_16 / t_pc, t_f8 / t_pc, t_i8 / t_pc,
                  t_g / t_pc, t_i8 / t_w8);
      std::fflush(stdout);
      md << "| " << n << " | " << k << " | " << m << " | " << t_pc << " | " << t_g << " | " << t_w8 << " | " << t_pc80 << " | " << t_16
         << " | " << t_i8 << " | " << t_f8 << " | " << t_f8rw << " | " << int(tops) << " | " << wbw << " | " << t_16 / t_pc << " | "
         << t_f8 / t_pc << " | " << t_i8 / t_pc << " | " << t_g / t_pc << " | " << t_i8 / t_w8 << " |\n";
      js << (first ? "" : ",\n") << "{\"n\": " << n << ", \"k\": " << k << ", \"m\": " << m << ", \"us\": {\"w4a8_pc\": "
         << t_pc << ", \"w4a8_g128\": " << t_g << ", \"w8a8\": " << t_w8 << ", \"w4a8_pc_sm80\": " << t_pc80 << ", \"cublas_fp16\": " << t_16
         << ", \"cublaslt_int8\": " << t_i8 << ", \"cublaslt_fp8\": " << t_f8 << ", \"fp8_rowwise\": " << t_f8rw << "}}";
      first = false;
      const int model = (&s - &shapes[0]) < 4 ? 0 : 1;
      Sum& sum = sums[model][m];
      const qs::kernels::QGemmPlan plan = qs::kernels::qgemm_plan(qs::WeightFormat::kW4A8PerChannel, m, n, k, c.sms, c.sm_version);
      sum.pc += t_pc, sum.g128 += t_g, sum.fp8 += t_f8, sum.fp8rw += t_f8rw;
      sum.plans += std::string(sum.plans.empty() ? "" : ", ") + plan_name(plan);
      if (tune) {  // the same cell with measured plans (qgemm_tune), right after the model's
        sum.pc_t += bench_ours(c, qs::WeightFormat::kW4A8PerChannel, m, n, k, c.sm_version, {-1, 1, 0},
                               qs::kernels::QGemmEpilogue::kLinear, {}, {}, true);
        sum.plans_t += std::string(sum.plans_t.empty() ? "" : ", ") + plan_name(g_last_plan);
        sum.g128_t += bench_ours(c, qs::WeightFormat::kW4A8G128, m, n, k, c.sm_version, {-1, 1, 0},
                                 qs::kernels::QGemmEpilogue::kLinear, {}, {}, true);
      }
    }
  }
  if (tune) {
    // The "model" columns are the main table's, timed earlier in the process; the per-cell "tune" lines compare the
    // two plans in alternating rounds (long kernels were seen up to 6% slower later in a process).
    md << "\n### Layer linears summed, cost-model plans vs measured plans (--tune, kernels/gemm_w4a8/qgemm_tune.h; "
          "model columns from the main table, timed earlier: the per-cell tune lines on stdout are same-moment)\n\n"
       << "| model | M | pc model us | pc tuned us | g128 model us | g128 tuned us | Lt FP8 us | FP8/pc tuned | "
          "g128/pc tuned | pc tuned plans |\n|---|---|---|---|---|---|---|---|---|---|\n";
    std::printf("\nlayer linears summed, --tune: model M | pc pc_tuned g128 g128_tuned fp8 (us) | fp8/pc_t "
                "g128_t/pc_t | tuned pc plans\n");
    for (int model = 0; model < 2; ++model)
      for (const auto& [m, sum] : sums[model]) {
        const char* name = model == 0 ? "llama-3-8b" : "llama-2-70b";
        std::printf("%-11s %5d | %8.1f %8.1f %8.1f %8.1f %8.1f | %5.2f %5.2f | %s\n", name, m, sum.pc, sum.pc_t,
                    sum.g128, sum.g128_t, sum.fp8, sum.fp8 / sum.pc_t, sum.g128_t / sum.pc_t, sum.plans_t.c_str());
        md << "| " << name << " | " << m << " | " << sum.pc << " | " << sum.pc_t << " | " << sum.g128 << " | "
           << sum.g128_t << " | " << sum.fp8 << " | " << sum.fp8 / sum.pc_t << " | " << sum.g128_t / sum.pc_t << " | "
           << sum.plans_t << " |\n";
      }
  }
  // Issue 11's figure: the four linears of a layer summed, per M, against cuBLASLt FP8 in the same run.
  md << "\n### Layer linears summed (Llama-3-8B: qkv 6144x4096 + o 4096x4096 + gate_up 28672x4096 + down "
        "4096x14336; Llama-2-70B: 10240x8192 + 8192x8192 + 57344x8192 + 8192x28672)\n\n"
     << "| model | M | W4A8 pc us | g128 us | Lt FP8 us | FP8 rw us | FP8/pc | FP8 rw/pc | g128/pc (time) | pc plans |\n"
     << "|---|---|---|---|---|---|---|---|---|---|\n";
  std::printf("\nlayer linears summed: model M | pc g128 fp8 fp8rw (us) | fp8/pc fp8rw/pc g128/pc | plans\n");
  for (int model = 0; model < 2; ++model)
    for (const auto& [m, sum] : sums[model]) {
      const char* name = model == 0 ? "llama-3-8b" : "llama-2-70b";
      std::printf("%-11s %5d | %8.1f %8.1f %8.1f %8.1f | %5.2f %5.2f %5.2f | %s\n", name, m, sum.pc, sum.g128, sum.fp8,
                  sum.fp8rw, sum.fp8 / sum.pc, sum.fp8rw / sum.pc, sum.g128 / sum.pc, sum.plans.c_str());
      md << "| " << name << " | " << m << " | " << sum.pc << " | " << sum.g128 << " | " << sum.fp8 << " | " << sum.fp8rw
         << " | " << sum.fp8 / sum.pc << " | " << sum.fp8rw / sum.pc << " | " << sum.g128 / sum.pc << " | " << sum.plans
         << " |\n";
    }
  std::fflush(stdout);
  js << "\n]}\n";
  js.close();
  md.close();
  run_silu_fusion(c, ms, out_dir);
  if (sweep) run_sweep(c, out_dir, sweep_ms, sweep_v, sweep_70b);
  CK(cudaDeviceSynchronize());
  return 0;
}
