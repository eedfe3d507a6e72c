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
// (qgemm_plan_stream_k; tests, sweeps) but the plan does not pick it: the model cannot rank it (it wins by 12-20% on
// deep-K layers at small M and loses elsewhere, BENCHMARKS.md); the measured plan selection (qgemm_tune.h) times it.
// The sm90 launch order (raster_m, qgemm_raster_m): weight tiles fastest up to 1024 tokens and on narrow layers;
// beyond, groups of 2048 tokens' token tiles, so that resident CTAs share the weight tiles of wide layers.
#pragma once

#include <cstddef>
#include <vector>

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
  // sm90 configs: the output tiles' launch order (qgemm_raster_tile), in token tiles per raster group (>= 1; 1 =
  // weight tiles fastest). qgemm_plan sets qgemm_raster_m's choice, qgemm_plan_stream_k all token tiles (token
  // tiles fastest). Any value gives the same results.
  int raster_m = 1;
};

// Output tile `tile` of an sm90 launch (linear launch / stream-K order) -> its weight tile `nt` and token tile `mt`.
// Consecutive tiles take the `raster_m` token tiles of one group for one weight tile, then the same token tiles for
// the next weight tile, and so on, group after group: the CTAs resident at one time share each weight tile, which
// comes from DRAM once instead of once per token tile, and a group's activations stay in L2. raster_m = 1: weight
// tiles fastest; raster_m >= tiles_m: token tiles fastest over the whole launch.
constexpr void qgemm_raster_tile(int tile, int tiles_m, int tiles_n, int raster_m, int& nt, int& mt) {
  raster_m = raster_m < tiles_m ? raster_m : tiles_m;
  const int span = raster_m * tiles_n;  // tiles of one full group
  const int g = tile / span, r = tile - g * span;
  const int rem = tiles_m - g * raster_m;
  const int gm = rem < raster_m ? rem : raster_m;  // the last group may hold fewer token tiles
  nt = r / gm;
  mt = g * raster_m + (r - nt * gm);
}
// The raster group qgemm_plan gives an sm90 config for (M, N) on `num_sms` SMs (measured rule in qgemm_plan.cc):
// 1 up to kQGemmRasterMinTokens tokens, or when the weight-fastest order already has every weight tile shared by
// >= 8 resident CTAs (num_sms / weight tiles >= 8); otherwise kQGemmRasterTokens tokens' worth of token tiles.
constexpr int kQGemmRasterMinTokens = 1024, kQGemmRasterTokens = 2048;
int qgemm_raster_m(int config, int m, int n, int num_sms);

// Chooses the tile config and split-K for a problem on a GPU with `num_sms` multiprocessors and compute
// capability `sm_version` (e.g. 90; >= 90 selects the wgmma kernel above 16 tokens). `splits_override` > 0 forces
// a split-K factor (tests), clamped to what the chosen config allows.
QGemmPlan qgemm_plan(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override = 0);
// What the measured plan selection (qgemm_tune.h) times for (M, N, K): on the wgmma path (sm_version >= 90,
// m > 16) qgemm_plan's pick first, then the next `max_split_plans` - 1 cheapest unsplit / split-K plans by the cost
// model, then a stream-K plan over num_sms CTAs for every config whose token tile is at most max(64, 2 M) (the
// model does not rank stream-K well: it is timed, not priced). Otherwise the plan alone.
std::vector<QGemmPlan> qgemm_plan_candidates(WeightFormat v, int m, int n, int k, int num_sms, int sm_version,
                                             int max_split_plans);
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
// The cost model's estimate for a plan on weights of format v, in microseconds (relative; used to rank candidates,
// printed by bench_gemm).
double qgemm_plan_cost_us(WeightFormat v, const QGemmPlan& plan, int m, int n, int k, int num_sms);

const char* qgemm_config_name(int config);  // e.g. "bn64_bm16", "sm90_bn256_bm128"; "?" when out of range
int qgemm_num_configs();                    // configs 0..n-1 (any may be forced in a plan)
bool qgemm_config_is_sm90(int config);      // needs an sm_90a device

}  // namespace qs::kernels
