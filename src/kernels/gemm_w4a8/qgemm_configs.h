// Host-visible table of the quantized-GEMM tile configurations, generated from qgemm_configs.def (the one list):
// an enum of config ids (kQGemm_<name>) and a constexpr array of their shapes that the plan, the kernels'
// compile-time configuration and the tests all read. Pure C++ (no CUDA headers), so the plan is host code.
#pragma once

namespace qs::kernels {

enum QGemmConfigId : int {
#define QS_QGEMM_SM80(name, bn, bm, wn, wm) kQGemm_##name,
#define QS_QGEMM_SM90(name, bm, mt) kQGemm_##name,
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90
  kQGemmNumConfigs
};

struct QGemmConfig {
  const char* name;
  bool sm90;         // wgmma kernel (needs sm_90a) vs mma.sync kernel
  int bn, bm;        // output channels x tokens per block
  int warps_n, warps_m;  // sm80: warp grid; sm90: 0
  int mt;            // sm90: m64 tiles per consumer warpgroup; sm80: 0
};

inline constexpr QGemmConfig kQGemmConfigs[] = {
#define QS_QGEMM_SM80(name, bn, bm, wn, wm) {#name, false, bn, bm, wn, wm, 0},
#define QS_QGEMM_SM90(name, bm, mt) {#name, true, 128 * (mt), bm, 0, 0, mt},
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90
};
static_assert(sizeof(kQGemmConfigs) / sizeof(kQGemmConfigs[0]) == kQGemmNumConfigs);

// Most CTAs of one sm90 split-K (the portable cluster size limit, also applied to the global-workspace mode).
inline constexpr int kQGemmMaxClusterSplits = 8;
// Whether sm90 splits may run as thread-block clusters (DSMEM reduction). When false, every sm90 split goes
// through the global workspace (plans and forced plans alike), so no untested scheme can be picked.
inline constexpr bool kQGemmClusterSplits = true;

}  // namespace qs::kernels
