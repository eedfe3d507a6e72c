// Prepare and run for the quantized GEMMs (qgemm.h): TMA descriptor encoding (weights once per upload through
// qgemm_prepare, activations per call), argument checks and the dispatch to the instantiated kernels, all
// generated from the config table (qgemm_configs.def). The plan is host code in qgemm_plan.cc.
#include <cstring>
#include <string>

#include "kernels/common/tensor_map.h"
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"
#include "kernels/gemm_w4a8/qgemm_sm90.cuh"

namespace qs::kernels {
namespace qgemm_detail {

// Every instantiation, declared from the one config table (defined in qgemm_w4a8*.cu and gemm_w8a8/*.cu).
#define QS_QGEMM_SM80(name, bn, bm, wn, wm)                                                                     \
  extern template Status launch_qgemm<0, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*,           \
                                                        cudaStream_t);                                          \
  extern template Status launch_qgemm<1, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*,           \
                                                        cudaStream_t);                                          \
  extern template Status launch_qgemm<2, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
#define QS_QGEMM_SM90(name, bm, mt)                                                                               \
  extern template Status launch_qgemm_sm90<0, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, int, \
                                                             int, int, const CUtensorMap&, const CUtensorMap&, cudaStream_t); \
  extern template Status launch_qgemm_sm90<1, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, int, \
                                                             int, int, const CUtensorMap&, const CUtensorMap&, cudaStream_t); \
  extern template Status launch_qgemm_sm90<2, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, int, \
                                                             int, int, const CUtensorMap&, const CUtensorMap&, cudaStream_t);
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90

namespace {

Status encode_2d(CUtensorMap* map, CUtensorMapDataType type, const void* ptr, uint64_t dim0, uint64_t dim1,
                 uint64_t stride1_bytes, uint32_t box0, uint32_t box1, CUtensorMapSwizzle swizzle) {
  const uint64_t dims[2] = {dim0, dim1};
  const uint32_t box[2] = {box0, box1};
  return encode_tensor_map(map, type, 2, ptr, dims, &stride1_bytes, box, swizzle, "qgemm");
}

}  // namespace

Status make_sm90_x_map(const QGemmParams& p, int bm, CUtensorMap* map) {
  return encode_2d(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.x, uint64_t(p.k), uint64_t(p.m), uint64_t(p.k), kBK,
                   uint32_t(bm), CU_TENSOR_MAP_SWIZZLE_128B);
}

Status make_sm90_weight_maps(WeightFormat v, int n, int k, const void* w, const uint16_t* s2zn, int bn,
                             CUtensorMap* wmap, CUtensorMap* smap) {
  const uint64_t kgs = uint64_t(k) / kBK;
  const uint64_t tile_bytes = v == WeightFormat::kW8A8 ? 2048 : 1024;
  QS_RETURN_IF_ERROR(encode_2d(wmap, CU_TENSOR_MAP_DATA_TYPE_UINT64, w, kgs * tile_bytes / 8, uint64_t(n / 16),
                               kgs * tile_bytes, uint32_t(tile_bytes / 8), uint32_t(bn / 16),
                               CU_TENSOR_MAP_SWIZZLE_NONE));
  if (v == WeightFormat::kW4A8G128) {
    QS_RETURN_IF_ERROR(encode_2d(smap, CU_TENSOR_MAP_DATA_TYPE_UINT16, s2zn, uint64_t(n), kgs, uint64_t(n) * 2,
                                 uint32_t(bn), 1, CU_TENSOR_MAP_SWIZZLE_NONE));
  } else {
    *smap = *wmap;  // unused
  }
  return Status::ok();
}

// sm80 split-K workspace: [per-tile split counters, 256-byte aligned][INT32 partials splits x m x n] (as the plan).
size_t counter_bytes(int config, int m, int n) {
  const QGemmConfig& c = kQGemmConfigs[config];
  const size_t tiles = size_t((n + c.bn - 1) / c.bn) * size_t((m + c.bm - 1) / c.bm);
  return (tiles * sizeof(int) + 255) / 256 * 256;
}

// The dispatch switch over the table, for one variant. `wmap` / `smap`: the sm90 configs' weight maps.
template <int V>
Status launch_variant(int config, const QGemmParams& p, int splits, int tps, int32_t* partial, int* ctr,
                      int sk_grid, int sk_per, int raster_m, const CUtensorMap& wmap, const CUtensorMap& smap,
                      cudaStream_t s) {
  (void)wmap, (void)smap, (void)partial, (void)ctr, (void)sk_grid, (void)sk_per, (void)raster_m;
  switch (config) {
#define QS_QGEMM_SM80(name, bn, bm, wn, wm) \
  case kQGemm_##name: return launch_qgemm<V, kQGemm_##name>(p, splits, tps, partial, ctr, s);
#define QS_QGEMM_SM90(name, bm, mt) \
  case kQGemm_##name: return launch_qgemm_sm90<V, kQGemm_##name>(p, splits, tps, partial, ctr, sk_grid, sk_per, raster_m, wmap, smap, s);
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90
  }
  return Status::error("qgemm: unknown tile config " + std::to_string(config));
}

}  // namespace qgemm_detail

Status qgemm_prepare(const QGemmParams& wp, QGemmPrepared* out) {
  using namespace qgemm_detail;
  if (!out) return Status::error("qgemm_prepare: null output");
  if (wp.n <= 0 || wp.n % 16 != 0 || wp.k <= 0 || wp.k % kBK != 0)
    return Status::error("qgemm_prepare: weight shape [" + std::to_string(wp.n) + ", " + std::to_string(wp.k) +
                         "] needs N % 16 == 0 and K % 128 == 0");
  if (!wp.w || (wp.variant == WeightFormat::kW4A8G128 && !wp.s2zn))
    return Status::error("qgemm_prepare: null weight pointer");
  QGemmPrepared& q = *out;
  q.ready = false;
  q.num_tuned = 0;
  q.variant = wp.variant;
  q.n = wp.n;
  q.k = wp.k;
  q.w = wp.w;
  q.s2zn = wp.s2zn;
  int dev = 0, major = 0, minor = 0;
  QS_CUDA_RETURN(cudaGetDevice(&dev));
  QS_CUDA_RETURN(cudaDeviceGetAttribute(&q.num_sms, cudaDevAttrMultiProcessorCount, dev));
  QS_CUDA_RETURN(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  QS_CUDA_RETURN(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  q.sm_version = major * 10 + minor;
  for (int c = 0; c < kQGemmNumConfigs; ++c) {
    if (!kQGemmConfigs[c].sm90) {
      std::memset(&q.wmap[c], 0, sizeof(CUtensorMap));
      std::memset(&q.smap[c], 0, sizeof(CUtensorMap));
      continue;
    }
    QS_RETURN_IF_ERROR(
        make_sm90_weight_maps(wp.variant, wp.n, wp.k, wp.w, wp.s2zn, kQGemmConfigs[c].bn, &q.wmap[c], &q.smap[c]));
  }
  q.ready = true;
  return Status::ok();
}

QGemmPlan qgemm_plan(const QGemmPrepared& prep, int m) {
  for (int i = 0; i < prep.num_tuned; ++i)
    if (prep.tuned[i].m == m) return prep.tuned[i].plan;
  return qgemm_plan(prep.variant, m, prep.n, prep.k, prep.num_sms, prep.sm_version);
}

Status qgemm_set_tuned_plan(QGemmPrepared* prep, int m, const QGemmPlan& plan) {
  if (!prep || !prep->ready) return Status::error("qgemm_set_tuned_plan: weights not prepared");
  if (plan.config < 0 || plan.config >= qgemm_num_configs() ||
      (qgemm_config_is_sm90(plan.config) && prep->sm_version < 90))
    return Status::error("qgemm_set_tuned_plan: plan config " + std::to_string(plan.config) +
                         " does not run on this GPU");
  for (int i = 0; i < prep->num_tuned; ++i)
    if (prep->tuned[i].m == m) {
      prep->tuned[i].plan = plan;
      return Status::ok();
    }
  if (prep->num_tuned >= QGemmPrepared::kMaxTuned)
    return Status::error("qgemm_set_tuned_plan: at most " + std::to_string(QGemmPrepared::kMaxTuned) +
                         " tuned token counts per weight");
  prep->tuned[prep->num_tuned++] = {m, plan};
  return Status::ok();
}

Status qgemm_run(const QGemmParams& p, const QGemmPlan& plan, cudaStream_t stream, const QGemmPrepared* prep) {
  using namespace qgemm_detail;
  if (p.n <= 0 || p.n % 16 != 0) return Status::error("qgemm: N=" + std::to_string(p.n) + " must be a positive multiple of 16");
  if (p.k <= 0 || p.k % kBK != 0) return Status::error("qgemm: K=" + std::to_string(p.k) + " must be a positive multiple of 128");
  if (p.m < 0) return Status::error("qgemm: negative M");
  if (plan.config < 0 || plan.config >= qgemm_num_configs()) return Status::error("qgemm: bad plan config");
  if (p.m == 0) return Status::ok();
  if (!p.x || !p.sx || !p.w || !p.scale || (!p.y && !p.acc_out))
    return Status::error("qgemm: a required pointer (x, sx, w, scale, y) is null");
  if (p.variant == WeightFormat::kW4A8PerChannel && (!p.xsum || !p.szero))
    return Status::error("qgemm: per-channel W4A8 needs xsum and szero");
  if (p.variant == WeightFormat::kW4A8G128 && (!p.s2zn || !p.qsum))
    return Status::error("qgemm: g128 W4A8 needs s2zn and qsum");
  if (p.epilogue == QGemmEpilogue::kSiluMul && p.residual)
    return Status::error("qgemm: the SiLU*up epilogue takes no residual");
  for (const void* q : {(const void*)p.x, (const void*)p.w, (const void*)p.scale, (const void*)p.szero,
                        (const void*)p.s2zn, (const void*)p.bias, (const void*)p.residual, (const void*)p.y,
                        (const void*)p.acc_out, (const void*)p.workspace})
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return Status::error("qgemm: pointers must be 16-byte aligned");
  const int kgs = p.k / kBK;
  const int splits = std::max(1, plan.splits);
  const int tps = (kgs + splits - 1) / splits;
  if ((splits - 1) * tps >= kgs) return Status::error("qgemm: plan has an empty split (plan for this K)");
  int32_t* partial = nullptr;
  int* counters = nullptr;
  const bool sm90 = qgemm_config_is_sm90(plan.config);
  if (sm90 && splits > kQGemmMaxClusterSplits)
    return Status::error("qgemm: sm90 plans split K at most 8 ways (one cluster), got " + std::to_string(splits));
  int sk_grid = 0, sk_per = 0;
  if (plan.stream_k_ctas > 0) {
    if (!sm90 || splits != 1) return Status::error("qgemm: a stream-K plan needs an sm90 config and no split");
    sk_grid = qgemm_stream_k_grid(p.m, p.n, p.k, plan.config, plan.stream_k_ctas);
    sk_per = qgemm_stream_k_per(p.m, p.n, p.k, plan.config, plan.stream_k_ctas);
    const size_t need = qgemm_stream_k_workspace(plan.config, sk_grid);
    if (!p.workspace || plan.workspace_bytes < need)
      return Status::error("qgemm: a stream-K plan needs a workspace of plan.workspace_bytes (plan for this M)");
    counters = static_cast<int*>(p.workspace);
    partial = reinterpret_cast<int32_t*>(static_cast<char*>(p.workspace) + (size_t(sk_grid) * sizeof(int) + 255) / 256 * 256);
  } else if (splits > 1 && (!sm90 || plan.global_split)) {
    const size_t cb = counter_bytes(plan.config, p.m, p.n);
    if (!p.workspace || plan.workspace_bytes < cb + size_t(splits) * p.m * p.n * sizeof(int32_t))
      return Status::error("qgemm: split-K needs a workspace of plan.workspace_bytes (plan for this M)");
    counters = static_cast<int*>(p.workspace);
    partial = reinterpret_cast<int32_t*>(static_cast<char*>(p.workspace) + cb);
  } else if (p.acc_out) {
    partial = p.acc_out;  // one split: the kernel writes the INT32 accumulators directly
  }
  // The weight maps: from the prepared object (built at upload) when it describes these weights, else encoded.
  CUtensorMap wmap_local{}, smap_local{};
  const CUtensorMap* wmap = &wmap_local;
  const CUtensorMap* smap = &smap_local;
  if (sm90) {
    if (prep && prep->ready) {
      if (prep->w != p.w || prep->n != p.n || prep->k != p.k || prep->variant != p.variant ||
          (p.variant == WeightFormat::kW4A8G128 && prep->s2zn != p.s2zn))
        return Status::error("qgemm: the prepared weights do not describe this call's weights");
      wmap = &prep->wmap[plan.config];
      smap = &prep->smap[plan.config];
    } else {
      QS_RETURN_IF_ERROR(make_sm90_weight_maps(p.variant, p.n, p.k, p.w, p.s2zn, kQGemmConfigs[plan.config].bn,
                                               &wmap_local, &smap_local));
    }
  }
  Status st;
  switch (p.variant) {
    case WeightFormat::kW4A8PerChannel: st = launch_variant<0>(plan.config, p, splits, tps, partial, counters, sk_grid, sk_per, plan.raster_m, *wmap, *smap, stream); break;
    case WeightFormat::kW4A8G128: st = launch_variant<1>(plan.config, p, splits, tps, partial, counters, sk_grid, sk_per, plan.raster_m, *wmap, *smap, stream); break;
    case WeightFormat::kW8A8: st = launch_variant<2>(plan.config, p, splits, tps, partial, counters, sk_grid, sk_per, plan.raster_m, *wmap, *smap, stream); break;
    default: return Status::error("qgemm: unknown variant");
  }
  QS_RETURN_IF_ERROR(st);
  return Status::ok();
}

}  // namespace qs::kernels
