// Plan and run for the quantized GEMMs (qgemm.h): config choice by M, split-K when the output tiles cannot fill
// the GPU, argument checks, dispatch to the instantiated kernels, and the split-K reduction kernel.
#include <string>

#include "kernels/gemm_w4a8/qgemm_kernel.cuh"

namespace qs::kernels {
namespace qgemm_detail {

#define QS_QGEMM_EXTERN(V, CONFIG) \
  extern template Status launch_qgemm<V, CONFIG>(const QGemmParams&, int, int, int32_t*, cudaStream_t);
QS_QGEMM_EXTERN(0, 0)
QS_QGEMM_EXTERN(0, 1)
QS_QGEMM_EXTERN(0, 2)
QS_QGEMM_EXTERN(1, 0)
QS_QGEMM_EXTERN(1, 1)
QS_QGEMM_EXTERN(1, 2)
QS_QGEMM_EXTERN(2, 0)
QS_QGEMM_EXTERN(2, 1)
QS_QGEMM_EXTERN(2, 2)
#undef QS_QGEMM_EXTERN

__global__ void qgemm_reduce_kernel(const QGemmParams p, const int32_t* partial, int splits) {
  const int per_row = p.n / 8;
  const int64_t items = int64_t(p.m) * per_row;
  const size_t plane = size_t(p.m) * p.n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < items; i += int64_t(gridDim.x) * blockDim.x) {
    const int m = int(i / per_row), n = int(i % per_row) * 8;
    const size_t o = size_t(m) * p.n + n;
    int32_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int s = 0; s < splits; ++s) {
      const int4 v0 = *reinterpret_cast<const int4*>(partial + s * plane + o);
      const int4 v1 = *reinterpret_cast<const int4*>(partial + s * plane + o + 4);
      a[0] += v0.x, a[1] += v0.y, a[2] += v0.z, a[3] += v0.w;
      a[4] += v1.x, a[5] += v1.y, a[6] += v1.z, a[7] += v1.w;
    }
    if (p.acc_out) {
      *reinterpret_cast<int4*>(p.acc_out + o) = make_int4(a[0], a[1], a[2], a[3]);
      *reinterpret_cast<int4*>(p.acc_out + o + 4) = make_int4(a[4], a[5], a[6], a[7]);
    } else {
      epilogue8(p, m, n, a);
    }
  }
}

template <int V>
Status launch_variant(int config, const QGemmParams& p, int splits, int tps, int32_t* partial, cudaStream_t s) {
  switch (config) {
    case 0: return launch_qgemm<V, 0>(p, splits, tps, partial, s);
    case 1: return launch_qgemm<V, 1>(p, splits, tps, partial, s);
    case 2: return launch_qgemm<V, 2>(p, splits, tps, partial, s);
  }
  return Status::error("qgemm: unknown tile config " + std::to_string(config));
}

}  // namespace qgemm_detail

int qgemm_num_configs() { return qgemm_detail::kNumConfigs; }

const char* qgemm_config_name(int config) {
  switch (config) {
    case 0: return "bn64_bm16";
    case 1: return "bn64_bm64";
    case 2: return "bn128_bm128";
  }
  return "?";
}

QGemmPlan qgemm_plan(QGemmVariant v, int m, int n, int k, int num_sms, int splits_override) {
  (void)v;
  QGemmPlan plan;
  plan.config = m <= 16 ? 0 : m <= 64 ? 1 : 2;
  const auto& ts = qgemm_detail::kTileShapes[plan.config];
  const int kgs = k / qgemm_detail::kBK;
  const int64_t tiles = int64_t((n + ts.bn - 1) / ts.bn) * ((m + ts.bm - 1) / ts.bm);
  int splits = 1;
  if (splits_override > 0) {
    splits = splits_override;
  } else {
    // Small problems: split K until the grid covers about two waves, keeping >= 4 k tiles per split.
    const int64_t want = plan.config == 2 ? num_sms : 2 * int64_t(num_sms);
    if (tiles < want) splits = int(std::min<int64_t>((want + tiles - 1) / tiles, std::max(1, kgs / 4)));
    splits = std::min(splits, 8);
  }
  splits = std::max(1, std::min(splits, std::max(1, kgs)));
  const int tps = (kgs + splits - 1) / std::max(1, splits);
  plan.splits = tps > 0 ? (kgs + tps - 1) / tps : 1;  // no empty split
  plan.workspace_bytes = plan.splits > 1 ? size_t(plan.splits) * size_t(std::max(m, 0)) * n * sizeof(int32_t) : 0;
  return plan;
}

Status qgemm_run(const QGemmParams& p, const QGemmPlan& plan, cudaStream_t stream) {
  using namespace qgemm_detail;
  if (p.n <= 0 || p.n % 16 != 0) return Status::error("qgemm: N=" + std::to_string(p.n) + " must be a positive multiple of 16");
  if (p.k <= 0 || p.k % kBK != 0) return Status::error("qgemm: K=" + std::to_string(p.k) + " must be a positive multiple of 128");
  if (p.m < 0) return Status::error("qgemm: negative M");
  if (plan.config < 0 || plan.config >= kNumConfigs) return Status::error("qgemm: bad plan config");
  if (p.m == 0) return Status::ok();
  if (!p.x || !p.sx || !p.w || !p.scale || (!p.y && !p.acc_out))
    return Status::error("qgemm: a required pointer (x, sx, w, scale, y) is null");
  if (p.variant == QGemmVariant::kW4A8PerChannel && (!p.xsum || !p.szero))
    return Status::error("qgemm: per-channel W4A8 needs xsum and szero");
  if (p.variant == QGemmVariant::kW4A8G128 && !p.s2zn) return Status::error("qgemm: g128 W4A8 needs s2zn");
  for (const void* q : {(const void*)p.x, (const void*)p.w, (const void*)p.scale, (const void*)p.szero,
                        (const void*)p.s2zn, (const void*)p.bias, (const void*)p.residual, (const void*)p.y,
                        (const void*)p.acc_out, (const void*)p.workspace})
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return Status::error("qgemm: pointers must be 16-byte aligned");
  const int kgs = p.k / kBK;
  const int splits = std::max(1, plan.splits);
  const int tps = (kgs + splits - 1) / splits;
  if ((splits - 1) * tps >= kgs) return Status::error("qgemm: plan has an empty split (plan for this K)");
  int32_t* partial = nullptr;
  if (splits > 1) {
    if (!p.workspace || plan.workspace_bytes < size_t(splits) * p.m * p.n * sizeof(int32_t))
      return Status::error("qgemm: split-K needs a workspace of plan.workspace_bytes (plan for this M)");
    partial = static_cast<int32_t*>(p.workspace);
  } else if (p.acc_out) {
    partial = p.acc_out;  // one split: the kernel writes the INT32 accumulators directly
  }
  Status st;
  switch (p.variant) {
    case QGemmVariant::kW4A8PerChannel: st = launch_variant<0>(plan.config, p, splits, tps, partial, stream); break;
    case QGemmVariant::kW4A8G128: st = launch_variant<1>(plan.config, p, splits, tps, partial, stream); break;
    case QGemmVariant::kW8A8: st = launch_variant<2>(plan.config, p, splits, tps, partial, stream); break;
    default: return Status::error("qgemm: unknown variant");
  }
  QS_RETURN_IF_ERROR(st);
  if (splits > 1) {
    const int64_t items = int64_t(p.m) * (p.n / 8);
    const int blocks = int(std::min<int64_t>((items + 255) / 256, 4096));
    qgemm_reduce_kernel<<<blocks, 256, 0, stream>>>(p, partial, splits);
    QS_CUDA_RETURN(cudaGetLastError());
  }
  return Status::ok();
}

}  // namespace qs::kernels
