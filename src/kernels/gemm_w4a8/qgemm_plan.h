// Host-only planning for the quantized GEMMs (qgemm.h): which tile configuration of the table
// (qgemm_configs.def) and which split-K factor a problem (M, N, K) gets on a GPU, and the workspace it needs.
// No CUDA calls, no CUDA headers: tested on any machine (tests/kernels/gemm_plan_test.cc).
//
// Schedule: below 17 tokens (or before sm_90) the mma.sync kernel, split over K through a global INT32 workspace
// with an in-kernel fixup when the tiles fill less than half a wave. From 17 tokens on sm_90 the wgmma kernel;
// its (config, split) pair is the cheapest by a cost model FITTED to bench_gemm sweeps on an H200 (waves of CTAs x
// per-wave and per-k-tile costs, the split-K reduction, the bytes loaded; qgemm_plan.cc), over every sm90 config
// of the table and the splits the measurements favour: none, 2 as a thread-block cluster reducing through DSMEM,
// or 2 / 4 / 8 through the global workspace. A persistent stream-K schedule exists for every sm90 config
// (qgemm_plan_stream_k; tests, sweeps) but the plan does not pick it: measured no faster at M 64-512 (BENCHMARKS.md).
#pragma once

#include <cstddef>

#include "formats/kinds.h"

namespace qs::kernels {

struct QGemmPlan {
  int config = 0;              // tile configuration index (qgemm_configs.def order)
  int splits = 1;              // split-K factor (sm90 configs: <= kQGemmMaxClusterSplits)
  size_t workspace_bytes = 0;  // device workspace run() needs (0 unless split through the global workspace)
  // sm90 configs with splits > 1: true = split through the global workspace (INT32 partials + per-tile counters,
  // the last CTA of a tile sums them, as the sm80 kernel does); false = one thread-block cluster per tile with a
  // DSMEM reduction. sm80 configs always split through the workspace (the field is ignored).
  bool global_split = false;
  // sm90 configs: > 0 = a persistent stream-K launch of this many CTAs (at most one per SM), splits == 1. The
  // (output tile, k tile) units, output tiles in order and k inner, are cut into equal contiguous ranges, one per
  // CTA: no wave quantization, and the TMA ring runs on across tile boundaries. A tile cut between CTAs is summed
  // by the CTA that finishes its share last (INT32 partials in the workspace, a self-resetting counter per tile).
  int stream_k_ctas = 0;
};

// Chooses the tile config and split-K for a problem on a GPU with `num_sms` multiprocessors and compute
// capability `sm_version` (e.g. 90; >= 90 selects the wgmma kernel above 16 tokens). `splits_override` > 0 forces
// a split-K factor (tests), clamped to what the chosen config allows.
QGemmPlan qgemm_plan(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override = 0);
// A plan for a forced config and split factor (tests, benchmark sweeps): splits clamped to [1, max], with no
// empty split, and the workspace that config needs.
QGemmPlan qgemm_plan_for(WeightFormat v, int m, int n, int k, int config, int splits, bool global_split = false);
// A persistent stream-K plan for a forced sm90 config over `ctas` CTAs (clamped to [1, units]), with the workspace
// it needs. Not for sm80 configs (returns the plain plan).
QGemmPlan qgemm_plan_stream_k(WeightFormat v, int m, int n, int k, int config, int ctas);
// Units (output tile x k tile) per CTA of a stream-K plan, and the CTAs that then get work (the launch grid).
int qgemm_stream_k_per(int m, int n, int k, int config, int ctas);
int qgemm_stream_k_grid(int m, int n, int k, int config, int ctas);
// A stream-K launch's workspace: [per-tile counters: `grid` ints, 256-byte aligned][2 x grid INT32 partial tiles
// of bm x bn] (a CTA cuts at most two tiles: the one it starts inside and the one it stops inside).
size_t qgemm_stream_k_workspace(int config, int grid);
// Largest split-K factor `config` supports for K (sm90: cluster limit 8; sm80: 16; never more than k/128).
int qgemm_max_splits(int config, int k);
// The cost model's estimate for a plan, in microseconds (relative; used to rank candidates, printed by bench_gemm).
double qgemm_plan_cost_us(const QGemmPlan& plan, int m, int n, int k, int num_sms);

const char* qgemm_config_name(int config);  // e.g. "bn64_bm16", "sm90_bn256_bm128"; "?" when out of range
int qgemm_num_configs();                    // configs 0..n-1 (any may be forced in a plan)
bool qgemm_config_is_sm90(int config);      // needs an sm_90a device

}  // namespace qs::kernels
