// Plan and run for the quantized GEMMs (qgemm.h): config choice by M, split-K when the output tiles cannot fill
// the GPU, argument checks, dispatch to the instantiated kernels, and the split-K reduction kernel.
#include <cudaTypedefs.h>

#include <string>

#include "kernels/gemm_w4a8/qgemm_kernel.cuh"
#include "kernels/gemm_w4a8/qgemm_sm90.cuh"

namespace qs::kernels {
namespace qgemm_detail {

#define QS_QGEMM_EXTERN(V, CONFIG) \
  extern template Status launch_qgemm<V, CONFIG>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
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
#define QS_QGEMM_SM90_EXTERN(V, CONFIG) \
  extern template Status launch_qgemm_sm90<V, CONFIG>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
QS_QGEMM_SM90_EXTERN(0, 0)
QS_QGEMM_SM90_EXTERN(0, 1)
QS_QGEMM_SM90_EXTERN(0, 2)
QS_QGEMM_SM90_EXTERN(1, 0)
QS_QGEMM_SM90_EXTERN(1, 1)
QS_QGEMM_SM90_EXTERN(1, 2)
QS_QGEMM_SM90_EXTERN(2, 0)
QS_QGEMM_SM90_EXTERN(2, 1)
QS_QGEMM_SM90_EXTERN(2, 2)
QS_QGEMM_SM90_EXTERN(0, 3)
QS_QGEMM_SM90_EXTERN(1, 3)
QS_QGEMM_SM90_EXTERN(2, 3)
#undef QS_QGEMM_SM90_EXTERN

namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      ptr = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

Status encode_2d(CUtensorMap* map, CUtensorMapDataType type, const void* ptr, uint64_t dim0, uint64_t dim1,
                 uint64_t stride1_bytes, uint32_t box0, uint32_t box1, CUtensorMapSwizzle swizzle) {
  const auto encode = tensor_map_encoder();
  if (!encode) return Status::error("qgemm: cuTensorMapEncodeTiled is not available from the driver");
  const cuuint64_t dims[2] = {dim0, dim1};
  const cuuint64_t strides[1] = {stride1_bytes};
  const cuuint32_t box[2] = {box0, box1};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = encode(map, type, 2, const_cast<void*>(ptr), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return Status::error("qgemm: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(int(r)));
  return Status::ok();
}

}  // namespace

Status make_sm90_maps(const QGemmParams& p, int bm, int bn, Sm90Maps* maps) {
  const uint64_t kgs = uint64_t(p.k) / kBK;
  const uint64_t tile_bytes = p.variant == WeightFormat::kW8A8 ? 2048 : 1024;
  QS_RETURN_IF_ERROR(encode_2d(&maps->x, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.x, uint64_t(p.k), uint64_t(p.m),
                               uint64_t(p.k), kBK, uint32_t(bm), CU_TENSOR_MAP_SWIZZLE_128B));
  QS_RETURN_IF_ERROR(encode_2d(&maps->w, CU_TENSOR_MAP_DATA_TYPE_UINT64, p.w, kgs * tile_bytes / 8,
                               uint64_t(p.n / 16), kgs * tile_bytes, uint32_t(tile_bytes / 8), uint32_t(bn / 16),
                               CU_TENSOR_MAP_SWIZZLE_NONE));
  if (p.variant == WeightFormat::kW4A8G128) {
    QS_RETURN_IF_ERROR(encode_2d(&maps->s, CU_TENSOR_MAP_DATA_TYPE_UINT16, p.s2zn, uint64_t(p.n), kgs,
                                 uint64_t(p.n) * 2, uint32_t(bn), 1, CU_TENSOR_MAP_SWIZZLE_NONE));
  } else {
    maps->s = maps->w;  // unused
  }
  return Status::ok();
}

// Tile shape (bn output channels x bm tokens) of a config.
void config_tile(int config, int* bn, int* bm) {
  if (config >= kSm90ConfigBase) {
    *bm = kSm90Shapes[config - kSm90ConfigBase].bm;
    *bn = 64 * kSm90Shapes[config - kSm90ConfigBase].mt * 2;
  } else {
    *bm = kTileShapes[config].bm;
    *bn = kTileShapes[config].bn;
  }
}

// Workspace: [per-tile split counters, 256-byte aligned][INT32 partials splits x m x n].
size_t counter_bytes(int config, int m, int n) {
  int bn, bm;
  config_tile(config, &bn, &bm);
  const size_t tiles = size_t((n + bn - 1) / bn) * size_t((m + bm - 1) / bm);
  return (tiles * sizeof(int) + 255) / 256 * 256;
}

template <int V>
Status launch_variant(int config, const QGemmParams& p, int splits, int tps, int32_t* partial, int* ctr,
                      cudaStream_t s) {
  switch (config) {
    case 0: return launch_qgemm<V, 0>(p, splits, tps, partial, ctr, s);
    case 1: return launch_qgemm<V, 1>(p, splits, tps, partial, ctr, s);
    case 2: return launch_qgemm<V, 2>(p, splits, tps, partial, ctr, s);
    case kSm90ConfigBase + 0: return launch_qgemm_sm90<V, 0>(p, splits, tps, partial, ctr, s);
    case kSm90ConfigBase + 1: return launch_qgemm_sm90<V, 1>(p, splits, tps, partial, ctr, s);
    case kSm90ConfigBase + 2: return launch_qgemm_sm90<V, 2>(p, splits, tps, partial, ctr, s);
    case kSm90ConfigBase + 3: return launch_qgemm_sm90<V, 3>(p, splits, tps, partial, ctr, s);
  }
  return Status::error("qgemm: unknown tile config " + std::to_string(config));
}

}  // namespace qgemm_detail

int qgemm_num_configs() { return qgemm_detail::kNumConfigs + qgemm_detail::kNumSm90Configs; }
bool qgemm_config_is_sm90(int config) { return config >= qgemm_detail::kSm90ConfigBase; }

const char* qgemm_config_name(int config) {
  switch (config) {
    case 0: return "bn64_bm16";
    case 1: return "bn64_bm64";
    case 2: return "bn128_bm128";
    case 3: return "sm90_bn128_bm32";
    case 4: return "sm90_bn128_bm64";
    case 5: return "sm90_bn256_bm128";
    case 6: return "sm90_bn128_bm128";
  }
  return "?";
}

QGemmPlan qgemm_plan(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override) {
  using namespace qgemm_detail;
  QGemmPlan plan;
  const int kgs = k / kBK;
  auto tiles_of = [&](int bn_, int bm_) { return int64_t((n + bn_ - 1) / bn_) * ((m + bm_ - 1) / bm_); };
  int bn, bm;
  int64_t want;  // blocks that fill the GPU in one wave
  if (sm_version >= 90 && m > 16) {
    // wgmma kernel, one 384-thread block per SM. BN=256 tiles only when they still fill most of the GPU.
    int idx = m <= 32 ? 0 : m <= 64 ? 1 : 3;
    if (m > 64 && tiles_of(256, 128) * 4 >= int64_t(num_sms) * 3) idx = 2;
    plan.config = kSm90ConfigBase + idx;
    bm = kSm90Shapes[idx].bm;
    bn = 64 * kSm90Shapes[idx].mt * 2;
    want = num_sms;
  } else {
    // mma.sync kernel (also the fastest on sm_90 for m <= 16: 128-thread blocks, several per SM).
    plan.config = m <= 16 ? 0 : m <= 64 ? 1 : 2;
    bn = kTileShapes[plan.config].bn;
    bm = kTileShapes[plan.config].bm;
    // Blocks wanted in flight: W4 m <= 16 blocks (49 KB of ring) run 4 to an SM, the others about 2.
    const bool w4_small = plan.config == 0 && v != WeightFormat::kW8A8;
    want = plan.config == 2 ? num_sms : w4_small ? 4 * int64_t(num_sms) : 2 * int64_t(num_sms);
  }
  const int64_t tiles = tiles_of(bn, bm);
  int splits = 1;
  if (splits_override > 0) {
    splits = splits_override;
  } else if (tiles * 2 <= want) {
    // Split K only when the tiles fill at most half of one wave: as many splits as fit in the wave, >= 4 k
    // tiles per split, at most 8 (the INT32 partials cost a pass through L2).
    splits = int(std::min<int64_t>(want / tiles, std::max(1, kgs / 4)));
    splits = std::min(splits, 8);
  }
  splits = std::max(1, std::min(splits, std::max(1, kgs)));
  const int tps = (kgs + splits - 1) / std::max(1, splits);
  plan.splits = tps > 0 ? (kgs + tps - 1) / tps : 1;  // no empty split
  plan.workspace_bytes = plan.splits > 1 ? qgemm_detail::counter_bytes(plan.config, std::max(m, 1), n) +
                                               size_t(plan.splits) * size_t(std::max(m, 0)) * n * sizeof(int32_t)
                                         : 0;
  return plan;
}

Status qgemm_run(const QGemmParams& p, const QGemmPlan& plan, cudaStream_t stream) {
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
  if (p.variant == WeightFormat::kW4A8G128 && !p.s2zn) return Status::error("qgemm: g128 W4A8 needs s2zn");
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
  if (splits > 1) {
    const size_t cb = counter_bytes(plan.config, p.m, p.n);
    if (!p.workspace || plan.workspace_bytes < cb + size_t(splits) * p.m * p.n * sizeof(int32_t))
      return Status::error("qgemm: split-K needs a workspace of plan.workspace_bytes (plan for this M)");
    counters = static_cast<int*>(p.workspace);
    partial = reinterpret_cast<int32_t*>(static_cast<char*>(p.workspace) + cb);
  } else if (p.acc_out) {
    partial = p.acc_out;  // one split: the kernel writes the INT32 accumulators directly
  }
  Status st;
  switch (p.variant) {
    case WeightFormat::kW4A8PerChannel: st = launch_variant<0>(plan.config, p, splits, tps, partial, counters, stream); break;
    case WeightFormat::kW4A8G128: st = launch_variant<1>(plan.config, p, splits, tps, partial, counters, stream); break;
    case WeightFormat::kW8A8: st = launch_variant<2>(plan.config, p, splits, tps, partial, counters, stream); break;
    default: return Status::error("qgemm: unknown variant");
  }
  QS_RETURN_IF_ERROR(st);
  return Status::ok();
}

}  // namespace qs::kernels
