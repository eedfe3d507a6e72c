// Host-only plan for the quantized GEMMs (qgemm_plan.h): the config table's queries, the sm80 split-K rule and
// the sm90 cost model that picks (config, cluster split) per (M, N, K). Every config it can return is an entry of
// qgemm_configs.def (tests/kernels/gemm_plan_test.cc sweeps shapes and GPU sizes and checks that).
#include "kernels/gemm_w4a8/qgemm_plan.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "kernels/gemm_w4a8/qgemm_configs.h"

namespace qs::kernels {
namespace {

constexpr int kBK = 128;  // k per tile (one g128 group)

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t tiles_of(int config, int m, int n) {
  const QGemmConfig& c = kQGemmConfigs[config];
  return cdiv(n, c.bn) * cdiv(std::max(m, 1), c.bm);
}

// sm80 split-K workspace: [per-tile counters, 256-byte aligned][INT32 partials splits x m x n].
size_t sm80_workspace(int config, int m, int n, int splits) {
  if (splits <= 1) return 0;
  const size_t counters = (size_t(tiles_of(config, m, n)) * sizeof(int) + 255) / 256 * 256;
  return counters + size_t(splits) * size_t(std::max(m, 0)) * size_t(n) * sizeof(int32_t);
}

// Model constants (cycles at ~1.75 GHz, one CTA per SM; H100/H200 class). Derived from the hardware rates, not
// fitted: 4096 INT8 MACs per cycle per SM (dense wgmma), ~2000 B/cycle of HBM for the
// whole GPU (3.5 TB/s), at most ~100 B/cycle streamed into one SM (a ~200 KB TMA ring over ~2000 cycles of
// latency), ~3000 B/cycle of L2 for the whole GPU, ~64 B/cycle of output stores per SM and a conservative
// ~32 B/cycle of remote (DSMEM) reads per SM for the split-K reduction.
constexpr double kClockGHz = 1.75;
constexpr double kMacsPerClk = 4096.0;
constexpr double kHbmBytesPerClk = 2000.0;
constexpr double kL2BytesPerClk = 3000.0;
constexpr double kSmStreamBytesPerClk = 100.0;
constexpr double kSmStoreBytesPerClk = 64.0;
constexpr double kSmDsmemBytesPerClk = 32.0;
constexpr double kPrologueClk = 1500.0;     // launch, descriptor fetch, first TMA round trip
constexpr double kWgmmaIssueClk = 16.0;     // per wgmma instruction of one warpgroup
// Per k tile not hidden behind the MMAs: barrier waits, fragment hand-over. The H100 runs of the kernel that
// drained the MMAs every k tile (commit 99c6734) spent ~450 cycles a k tile beyond the MMA time at M=64 and at
// M=4096 alike; with one MMA group kept in flight (qgemm_sm90.cuh) less is expected: 200 until measured.
constexpr double kKTileSyncClk = 200.0;
constexpr double kClusterSyncClk = 400.0;   // two cluster barriers

// Which sm90 split-K schemes the plan may choose: both (2), or only one (1: the cluster scheme when
// kSm90ClusterSplit, else the global workspace). Both are tested for every config (gemm_w4a8_gpu_test).
constexpr int kSm90SplitModes = 2;
constexpr bool kSm90ClusterSplit = true;

// SMs usable at once by clusters of s CTAs: clusters live inside one GPC (~8 GPCs of ~16.5 SMs on H100/H200).
int64_t cluster_slots(int num_sms, int s) {
  if (s <= 1) return num_sms;
  const double per_gpc = double(num_sms) / 8.0;
  const int64_t slots = int64_t(std::floor(per_gpc / s)) * s * 8;
  return std::clamp<int64_t>(slots, s, num_sms);
}

// Estimated cycles of one sm90 launch: the larger of the compute critical path (waves x k tiles x MMA time of
// the padded tile) and the memory time (HBM bytes once; L2 traffic with the weight re-read per token tile and
// the activations per channel tile; each CTA's stream capped per SM), plus the prologue, and per wave the
// epilogue (and, split, the cluster reduction of the tile through DSMEM).
double sm90_cost_clk(WeightFormat v, int config, int splits, bool global_split, int m, int n, int k, int num_sms) {
  const QGemmConfig& c = kQGemmConfigs[config];
  const int kgs = k / kBK;
  m = std::max(m, 1);
  const int64_t n_tiles = cdiv(n, c.bn), m_tiles = cdiv(m, c.bm);
  const int64_t ctas = n_tiles * m_tiles * splits;
  const int64_t slots = global_split ? num_sms : cluster_slots(num_sms, splits);
  const int64_t waves = cdiv(ctas, slots);
  const int kt = int(cdiv(kgs, splits));
  const double bm_eff = std::min(c.bm, m);
  const double w_tile = double(c.bn) * kBK / (v == WeightFormat::kW8A8 ? 1 : 2) +
                        (v == WeightFormat::kW4A8G128 ? c.bn * 2.0 : 0.0);
  const double x_tile = bm_eff * kBK;
  // Compute: every wave runs its CTAs' k tiles back to back.
  const double mma = double(c.bm) * c.bn * kBK / kMacsPerClk + 4.0 * c.mt * kWgmmaIssueClk + kKTileSyncClk;
  const double compute = double(waves) * kt * mma;
  // Memory: whole-GPU HBM and L2 limits, and the per-SM stream limit along one CTA's k range.
  const double w_total = w_tile * n_tiles * kgs, x_total = double(m) * k;
  const double hbm = (w_total + x_total) / kHbmBytesPerClk;
  const double l2 = (w_total * m_tiles + x_total * n_tiles) / kL2BytesPerClk;
  const double stream = double(waves) * kt * (w_tile + x_tile) / kSmStreamBytesPerClk;
  const double memory = std::max({hbm, l2, stream});
  const double tile_acc = bm_eff * c.bn * 4.0;  // INT32 accumulator bytes of one tile
  double epi = 300.0;
  if (splits == 1) {
    epi += bm_eff * c.bn * 2.0 / kSmStoreBytesPerClk;
  } else if (!global_split) {  // each CTA reduces 1/S of the tile from the S-1 peers, stores 1/S of the outputs
    epi += kClusterSyncClk + tile_acc * (splits - 1) / splits / kSmDsmemBytesPerClk +
           bm_eff * c.bn * 2.0 / splits / kSmStoreBytesPerClk;
  } else {  // every CTA writes its partial; the last one reads all S through L2 and stores the outputs
    epi += tile_acc / kSmStoreBytesPerClk + splits * tile_acc / kSmStreamBytesPerClk + kClusterSyncClk / 2 +
           bm_eff * c.bn * 2.0 / kSmStoreBytesPerClk;
  }
  return kPrologueClk + std::max(compute, memory) + double(waves) * epi;
}

}  // namespace

int qgemm_num_configs() { return kQGemmNumConfigs; }
bool qgemm_config_is_sm90(int config) { return config >= 0 && config < kQGemmNumConfigs && kQGemmConfigs[config].sm90; }
const char* qgemm_config_name(int config) {
  return config >= 0 && config < kQGemmNumConfigs ? kQGemmConfigs[config].name : "?";
}

int qgemm_max_splits(int config, int k) {
  const int kgs = std::max(1, k / kBK);
  return std::min(qgemm_config_is_sm90(config) ? kQGemmMaxClusterSplits : 16, kgs);
}

QGemmPlan qgemm_plan_for(WeightFormat v, int m, int n, int k, int config, int splits, bool global_split) {
  (void)v;
  QGemmPlan plan;
  plan.config = std::clamp(config, 0, kQGemmNumConfigs - 1);
  const int kgs = std::max(1, k / kBK);
  splits = std::clamp(splits, 1, qgemm_max_splits(plan.config, k));
  const int tps = int(cdiv(kgs, splits));
  plan.splits = int(cdiv(kgs, tps));  // no empty split
  const bool sm90 = qgemm_config_is_sm90(plan.config);
  plan.global_split = sm90 && plan.splits > 1 && (global_split || !kQGemmClusterSplits);
  plan.workspace_bytes = sm90 && !plan.global_split ? 0 : sm80_workspace(plan.config, m, n, plan.splits);
  return plan;
}

double qgemm_plan_cost_us(const QGemmPlan& plan, int m, int n, int k, int num_sms) {
  if (!qgemm_config_is_sm90(plan.config)) return -1.0;
  return sm90_cost_clk(WeightFormat::kW4A8PerChannel, plan.config, plan.splits, plan.global_split, m, n, k, num_sms) /
         (kClockGHz * 1e3);
}

namespace {

QGemmPlan plan_uncached(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override) {
  const int kgs = std::max(1, k / kBK);
  if (sm_version >= 90 && m > 16) {
    // wgmma kernel: the cheapest (config, cluster split) by the cost model; ties keep the earlier candidate
    // (fewer splits, earlier table entry) unless the later one is more than 1% cheaper.
    QGemmPlan best;
    double best_cost = 0;
    bool have = false;
    for (int c = 0; c < kQGemmNumConfigs; ++c) {
      if (!kQGemmConfigs[c].sm90) continue;
      const int lo = splits_override > 0 ? splits_override : 1;
      const int hi = splits_override > 0 ? splits_override : qgemm_max_splits(c, k);
      for (int s = lo; s <= hi; ++s)
        for (int mode = 0; mode < (s > 1 ? kSm90SplitModes : 1); ++mode) {
          const bool global = kSm90SplitModes == 1 ? !kSm90ClusterSplit : mode == 1;
          const QGemmPlan p = qgemm_plan_for(v, m, n, k, c, s, global);
          if (splits_override <= 0 && p.splits != s) continue;  // would leave a split empty: same as fewer splits
          const double cost = sm90_cost_clk(v, p.config, p.splits, p.global_split, m, n, k, num_sms);
          if (!have || cost < best_cost * 0.99) {
            best = p;
            best_cost = cost;
            have = true;
          }
        }
    }
    return best;
  }
  // mma.sync kernel (also the fastest on sm_90 for m <= 16: 128-thread blocks, several per SM).
  int config = m <= 16 ? kQGemm_bn64_bm16 : m <= 64 ? kQGemm_bn64_bm64 : kQGemm_bn128_bm128;
  // Blocks wanted in flight: W4 m <= 16 blocks (49 KB of ring) run 4 to an SM, the others about 2.
  const bool w4_small = config == kQGemm_bn64_bm16 && v != WeightFormat::kW8A8;
  const int64_t want = config == kQGemm_bn128_bm128 ? num_sms : w4_small ? 4 * int64_t(num_sms) : 2 * int64_t(num_sms);
  const int64_t tiles = tiles_of(config, m, n);
  int splits = 1;
  if (splits_override > 0) {
    splits = splits_override;
  } else if (tiles * 2 <= want) {
    // Split K only when the tiles fill at most half of one wave: as many splits as fit in the wave, >= 4 k
    // tiles per split, at most 8 (the INT32 partials cost a pass through L2).
    splits = int(std::min<int64_t>(want / tiles, std::max(1, kgs / 4)));
    splits = std::min(splits, 8);
  }
  return qgemm_plan_for(v, m, n, k, config, splits);
}

}  // namespace

// Memoized: the cost model evaluates ~80 candidates (a few microseconds), and an eager engine step asks for the
// same (format, M, N, K) plan once per layer. Bounded (cleared past 64K entries), thread-safe.
QGemmPlan qgemm_plan(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override) {
  num_sms = std::max(num_sms, 1);
  if (!(sm_version >= 90 && m > 16)) return plan_uncached(v, m, n, k, num_sms, sm_version, splits_override);
  using Key = std::array<int, 7>;
  struct KeyHash {
    size_t operator()(const Key& key) const {
      uint64_t h = 1469598103934665603ull;
      for (int x : key) h = (h ^ uint64_t(uint32_t(x))) * 1099511628211ull;
      return size_t(h);
    }
  };
  static std::mutex mu;
  static std::unordered_map<Key, QGemmPlan, KeyHash> memo;
  const Key key{int(v), m, n, k, num_sms, sm_version, splits_override};
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = memo.find(key);
    if (it != memo.end()) return it->second;
  }
  const QGemmPlan plan = plan_uncached(v, m, n, k, num_sms, sm_version, splits_override);
  std::lock_guard<std::mutex> lock(mu);
  if (memo.size() >= (size_t(1) << 16)) memo.clear();
  memo.emplace(key, plan);
  return plan;
}

}  // namespace qs::kernels
