// Per-token NLL / KL / top-1 of logits rows (algorithm and contract in logit_scores.h). One CTA of 256 threads per
// row: pass 1 finds the maximum and first argmax of the model row (and the reference row) and counts non-finite
// values; pass 2 sums exp(x - max) (and exp(ref - max_ref), exp(ref - max_ref) * (ref - x)) in FP64.
#include <cfloat>
#include <climits>
#include <cmath>

#include "kernels/common/cuda_check.h"
#include "kernels/eval/logit_scores.h"

namespace qs::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Maximum with the lowest index on ties (NaN never wins a comparison, as on the host).
struct MaxIdx {
  float v;
  int32_t i;
};
__device__ __forceinline__ MaxIdx better(MaxIdx a, MaxIdx b) {
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}

__device__ MaxIdx block_max(MaxIdx m, MaxIdx* red) {
  for (int o = 16; o > 0; o >>= 1) {
    MaxIdx other;
    other.v = __shfl_xor_sync(~0u, m.v, o);
    other.i = __shfl_xor_sync(~0u, m.i, o);
    m = better(m, other);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = red[0];
  for (int w = 1; w < kWarps; ++w) m = better(m, red[w]);
  return m;
}

__device__ double block_sum(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = 0.0;
  for (int w = 0; w < kWarps; ++w) v += red[w];
  return v;
}

__device__ int32_t block_count(int32_t v, int32_t* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = 0;
  for (int w = 0; w < kWarps; ++w) v += red[w];
  return v;
}

__global__ void __launch_bounds__(kThreads) score_kernel(LogitScoreParams p) {
  __shared__ MaxIdx red_m[kWarps];
  __shared__ double red_d[kWarps];
  __shared__ int32_t red_i[kWarps];
  const int64_t r = blockIdx.x;
  const int32_t V = p.vocab;
  const float* x = p.logits + r * p.ld;
  const float* y = p.ref_logits ? p.ref_logits + r * p.ref_ld : nullptr;

  MaxIdx mx{-INFINITY, INT_MAX}, my{-INFINITY, INT_MAX};
  int32_t bad = 0;
  for (int32_t v = threadIdx.x; v < V; v += kThreads) {
    const float a = x[v];
    bad += !isfinite(a);
    mx = better(mx, MaxIdx{a, v});
    if (y) {
      const float b = y[v];
      bad += !isfinite(b);
      my = better(my, MaxIdx{b, v});
    }
  }
  mx = block_max(mx, red_m);
  if (y) my = block_max(my, red_m);
  bad = block_count(bad, red_i);

  const double xm = double(mx.v), ym = double(my.v);
  double sx = 0.0, sy = 0.0, sxy = 0.0;
  for (int32_t v = threadIdx.x; v < V; v += kThreads) {
    const double a = double(x[v]);
    sx += exp(a - xm);
    if (y) {
      const double b = double(y[v]);
      const double e = exp(b - ym);
      sy += e;
      sxy += e * (b - a);
    }
  }
  sx = block_sum(sx, red_d);
  if (y) {
    sy = block_sum(sy, red_d);
    sxy = block_sum(sxy, red_d);
  }
  if (threadIdx.x == 0) {
    const double lse_x = xm + log(sx);
    const int32_t label = p.labels[r];
    p.nll[r] = (label >= 0 && label < V) ? lse_x - double(x[label]) : NAN;
    if (y) {
      const double lse_y = ym + log(sy);
      p.kl[r] = sxy / sy - lse_y + lse_x;
      p.top1[r] = mx.i == my.i;
    }
    p.bad[r] = bad;
  }
}

}  // namespace

Status score_logits(const LogitScoreParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.vocab < 1) return Status::error("score_logits: rows must be >= 0 and vocab >= 1");
  if (p.rows == 0) return Status::ok();
  if (!p.logits || !p.labels || !p.nll || !p.bad) return Status::error("score_logits: logits, labels, nll and bad are required");
  if (p.ref_logits && (!p.kl || !p.top1)) return Status::error("score_logits: a reference needs the kl and top1 outputs");
  LogitScoreParams q = p;
  if (q.ld == 0) q.ld = q.vocab;
  if (q.ref_ld == 0) q.ref_ld = q.vocab;
  if (q.ld < q.vocab || q.ref_ld < q.vocab) return Status::error("score_logits: a row stride is smaller than vocab");
  score_kernel<<<q.rows, kThreads, 0, stream>>>(q);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
