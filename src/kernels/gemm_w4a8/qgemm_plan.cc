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
#include <utility>
#include <vector>

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

// The sm90 cost model, in microseconds, FITTED to measurements (not derived from datasheet rates: the first,
// hand-derived model assumed ~100 B/cycle streamed per SM and cheap cluster reductions, and picked 5-8-way cluster
// splits that ran 2-4x slower than no split). The sweep: `bench_gemm --sweep` on an NVIDIA H200 (132 SMs; commit
// feb7216, 2026-12-01), every sm90 config x {1, 2, 4, 8} splits x {cluster, global} at M 64-512 on the Llama-3-8B
// o / gate_up / down shapes, 420 timings (bench/results/gemm-sweep-h200-feb7216.md); the fit: least squares on the
// relative error over the 300 of them the plan can pick (bench/fit_gemm_plan.py prints these constants). Median
// error 8%; the plan it implies is within 1% of the fastest measured candidate in total (leaving one shape out of
// the fit: within 9% on that shape).
// Terms, per wave of CTAs (one CTA per SM): a fixed start/finish cost, per k tile a fixed cost plus one
// proportional to the tile area, the split-K reduction proportional to the tile area, and for the whole launch the
// bytes every CTA loads (weights + activation tile per k tile, through L2). 4- and 8-way clusters were measured
// slower than 2-way clusters or the global workspace in every case (cluster co-scheduling across GPCs), so the
// plan offers splits {1, 2 (cluster), 2, 4, 8 (global)}.
constexpr double kUsPerWave = 2.735;
constexpr double kUsPerKTile = 0.120;
constexpr double kUsPerKTileArea = 0.2409;   // x (bm * bn / 16384)
constexpr double kUsPerLoadedMB = 0.0327;
// g128 only, per k tile and wave, x (bn / 128): the group scales' copy and the dequantization's multiply-add, whose
// cost grows with the weight rows of a tile (bn) and not with its tokens (bm), so larger token tiles amortize it.
// Chosen on `bench_gemm --sweep-only --sweep-g128 --ms 64,128,256,512` (H200, 2026-12-03, commit 190be24; 16
// (shape, M) cells of the Llama-3-8B linears): without it the plan's picks summed 4.0% over the fastest candidates
// it offers, with any value in 0.06-0.12 0.6% (0.04: 1.4%; 0.15: 0%; 0.3: 3.1%); 0.08 lies in the 0.04-0.09 us per
// k tile that the g128 probes imply (bench/results/gemm-serving.md, "g128 plan").
constexpr double kUsPerKTileG128 = 0.08;
struct SplitCost {
  int splits;
  bool global;
  double us_per_area;  // per wave, x (bm * bn / 16384)
};
constexpr std::array<SplitCost, 4> kSplitCosts{{{2, false, 2.104}, {2, true, 6.935}, {4, true, 6.317}, {8, true, 5.773}}};

// SMs usable at once by clusters of s CTAs: clusters live inside one GPC (~8 GPCs of ~16.5 SMs on H100/H200).
int64_t cluster_slots(int num_sms, int s) {
  if (s <= 1) return num_sms;
  const double per_gpc = double(num_sms) / 8.0;
  const int64_t slots = int64_t(std::floor(per_gpc / s)) * s * 8;
  return std::clamp<int64_t>(slots, s, num_sms);
}

// The fitted split-reduction cost of (splits, mode), or a negative value when the plan does not offer it.
double split_cost(int splits, bool global_split) {
  if (splits <= 1) return 0.0;
  for (const SplitCost& c : kSplitCosts)
    if (c.splits == splits && c.global == global_split) return c.us_per_area;
  return -1.0;
}

// The two per-k-tile terms both launch kinds share: the microseconds one CTA spends per k tile, and the weight bytes
// it loads per k tile (the g128 group scales included).
double us_per_ktile(WeightFormat v, const QGemmConfig& c) {
  const double area = double(c.bm) * c.bn / 16384.0;
  const double g128 = v == WeightFormat::kW4A8G128 ? kUsPerKTileG128 * c.bn / 128.0 : 0.0;
  return kUsPerKTile + kUsPerKTileArea * area + g128;
}
double weight_tile_bytes(WeightFormat v, const QGemmConfig& c) {
  return double(c.bn) * kBK / (v == WeightFormat::kW8A8 ? 1 : 2) + (v == WeightFormat::kW4A8G128 ? c.bn * 2.0 : 0.0);
}

// Estimated microseconds of one sm90 launch (see the constants above).
double sm90_cost_us(WeightFormat v, int config, int splits, bool global_split, int m, int n, int k, int num_sms) {
  const QGemmConfig& c = kQGemmConfigs[config];
  const int kgs = std::max(1, k / kBK);
  m = std::max(m, 1);
  const int64_t ctas = cdiv(n, c.bn) * cdiv(m, c.bm) * splits;
  const int64_t slots = splits > 1 && !global_split ? cluster_slots(num_sms, splits) : num_sms;
  const double waves = double(cdiv(ctas, slots));
  const double kt = double(cdiv(kgs, splits));
  const double area = double(c.bm) * c.bn / 16384.0;
  const double x_tile = double(std::min(c.bm, m)) * kBK;
  const double loaded_mb = double(ctas) * kt * (weight_tile_bytes(v, c) + x_tile) / 1e6;
  const double split = std::max(0.0, split_cost(splits, global_split));
  return waves * (kUsPerWave + kt * us_per_ktile(v, c) + split * area) + kUsPerLoadedMB * loaded_mb;
}

// Stream-K (plan.stream_k_ctas > 0): one wave of `ctas` persistent CTAs, each running `per` units (output tile x
// k tile) back to back with the same per-k-tile costs, plus the fixup of the tiles cut between CTAs (each CTA
// writes at most two INT32 partial tiles; kUsStreamKFixPerArea per 128x128 of tile area, a guess until fitted).
constexpr double kUsStreamKFixPerArea = 2.104;
constexpr bool kPlanOffersStreamK = false;
double stream_k_cost_us(WeightFormat v, int config, int ctas, int m, int n, int k) {
  const QGemmConfig& c = kQGemmConfigs[config];
  const int kgs = std::max(1, k / kBK);
  const int64_t units = tiles_of(config, m, n) * kgs;
  const int64_t per = cdiv(units, std::clamp<int64_t>(ctas, 1, units));
  const double area = double(c.bm) * c.bn / 16384.0;
  const double x_tile = double(std::min(c.bm, std::max(m, 1))) * kBK;
  const bool cut = units % per != 0 || per % kgs != 0;  // some tile is cut between CTAs
  return kUsPerWave + double(per) * us_per_ktile(v, c) + (cut ? kUsStreamKFixPerArea * area : 0.0) +
         kUsPerLoadedMB * double(units) * (weight_tile_bytes(v, c) + x_tile) / 1e6;
}

}  // namespace

size_t qgemm_stream_k_workspace(int config, int grid) {
  const QGemmConfig& c = kQGemmConfigs[std::clamp(config, 0, kQGemmNumConfigs - 1)];
  const size_t counters = (size_t(std::max(grid, 1)) * sizeof(int) + 255) / 256 * 256;
  return counters + 2 * size_t(std::max(grid, 1)) * size_t(c.bm) * size_t(c.bn) * sizeof(int32_t);
}

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

int qgemm_stream_k_per(int m, int n, int k, int config, int ctas) {
  const int64_t units = tiles_of(config, m, n) * std::max(1, k / kBK);
  return int(cdiv(units, std::clamp<int64_t>(ctas, 1, units)));
}

int qgemm_stream_k_grid(int m, int n, int k, int config, int ctas) {
  const int64_t units = tiles_of(config, m, n) * std::max(1, k / kBK);
  return int(cdiv(units, qgemm_stream_k_per(m, n, k, config, ctas)));
}

QGemmPlan qgemm_plan_stream_k(WeightFormat v, int m, int n, int k, int config, int ctas) {
  QGemmPlan plan = qgemm_plan_for(v, m, n, k, config, 1);
  if (!qgemm_config_is_sm90(plan.config)) return plan;
  const int grid = qgemm_stream_k_grid(m, n, k, plan.config, ctas);
  plan.stream_k_ctas = grid;
  plan.workspace_bytes = qgemm_stream_k_workspace(plan.config, grid);
  // Token tiles fastest over the whole launch (the order stream-K was measured with): consecutive CTAs' unit
  // ranges then share weight tiles.
  plan.raster_m = int(std::max<int64_t>(1, cdiv(std::max(m, 1), kQGemmConfigs[plan.config].bm)));
  return plan;
}

double qgemm_plan_cost_us(WeightFormat v, const QGemmPlan& plan, int m, int n, int k, int num_sms) {
  if (!qgemm_config_is_sm90(plan.config)) return -1.0;
  if (plan.stream_k_ctas > 0) return stream_k_cost_us(v, plan.config, plan.stream_k_ctas, m, n, k);
  return sm90_cost_us(v, plan.config, plan.splits, plan.global_split, m, n, k, num_sms);
}

namespace {

// Whether stream-K over the whole GPU is a candidate for `config` at m tokens: its token tile is at most
// max(64, 2 m) (larger ones compute mostly padding).
bool stream_k_candidate(int config, int m) {
  return kQGemmConfigs[config].sm90 && kQGemmConfigs[config].bm <= std::max(64, 2 * m);
}

// The wgmma kernel's candidates for (M, N, K) by the fitted cost model, cheapest first (ties keep the earlier
// candidate: no split, earlier table entry, unless a later one is more than 1% cheaper, so element 0 is the plan's
// pick): every sm90 config x the offered splits (none, and kSplitCosts), plus, when `with_stream_k`, a stream-K
// launch over num_sms CTAs of every stream_k_candidate config.
// A forced split factor (tests) is priced in both modes and no stream-K is offered.
std::vector<std::pair<QGemmPlan, double>> sm90_candidates(WeightFormat v, int m, int n, int k, int num_sms,
                                                          int splits_override, bool with_stream_k) {
  std::vector<std::pair<int, bool>> offered;  // (splits, global)
  if (splits_override > 0) {
    offered = {{splits_override, false}, {splits_override, true}};
  } else {
    offered.push_back({1, false});
    for (const SplitCost& sc : kSplitCosts)
      if (sc.global || kQGemmClusterSplits) offered.push_back({sc.splits, sc.global});
  }
  std::vector<std::pair<QGemmPlan, double>> out;
  for (int c = 0; c < kQGemmNumConfigs; ++c) {
    if (!kQGemmConfigs[c].sm90) continue;
    for (const auto& [s, global] : offered) {
      const QGemmPlan p = qgemm_plan_for(v, m, n, k, c, s, global);
      if (splits_override <= 0 && p.splits != s) continue;  // would leave a split empty: same as fewer splits
      out.push_back({p, sm90_cost_us(v, p.config, p.splits, p.global_split, m, n, k, num_sms)});
    }
    if (with_stream_k && splits_override <= 0 && stream_k_candidate(c, m)) {
      const QGemmPlan p = qgemm_plan_stream_k(v, m, n, k, c, num_sms);
      out.push_back({p, stream_k_cost_us(v, c, p.stream_k_ctas, m, n, k)});
    }
  }
  // The plan's pick: the first candidate (in the order above) that no later one undercuts by more than 1%.
  size_t best = 0;
  for (size_t i = 1; i < out.size(); ++i)
    if (out[i].second < out[best].second * 0.99) best = i;
  std::rotate(out.begin(), out.begin() + best, out.begin() + best + 1);
  std::stable_sort(out.begin() + 1, out.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  for (auto& [p, cost] : out)
    if (p.stream_k_ctas == 0) p.raster_m = qgemm_raster_m(p.config, m, n, num_sms);
  return out;
}

QGemmPlan plan_uncached(WeightFormat v, int m, int n, int k, int num_sms, int sm_version, int splits_override) {
  const int kgs = std::max(1, k / kBK);
  if (sm_version >= 90 && m > 16) {
    // wgmma kernel: the cheapest (config, split) by the fitted cost model (sm90_candidates).
    return sm90_candidates(v, m, n, k, num_sms, splits_override, kPlanOffersStreamK).front().first;
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

std::vector<QGemmPlan> qgemm_plan_candidates(WeightFormat v, int m, int n, int k, int num_sms, int sm_version,
                                             int max_split_plans) {
  num_sms = std::max(num_sms, 1);
  if (!(sm_version >= 90 && m > 16)) return {qgemm_plan(v, m, n, k, num_sms, sm_version)};
  // The model-ranked list without stream-K starts with the plan only while the plan does not offer stream-K.
  static_assert(!kPlanOffersStreamK, "qgemm_plan_candidates: element 0 must stay qgemm_plan's pick");
  std::vector<QGemmPlan> out;
  for (const auto& [p, cost] : sm90_candidates(v, m, n, k, num_sms, 0, false)) {
    if (int(out.size()) >= std::max(1, max_split_plans)) break;
    out.push_back(p);
  }
  for (int c = 0; c < kQGemmNumConfigs; ++c)
    if (stream_k_candidate(c, m)) out.push_back(qgemm_plan_stream_k(v, m, n, k, c, num_sms));
  return out;
}

// The launch order, MEASURED (bench_gemm --raster; NVIDIA H200, 2026-12-03; the plan's config on the eight
// Llama-3-8B / Llama-2-70B linears at M 256-8192, every group size 1, 2, 4, ... in the same process;
// bench/results/gemm-serving.md). At M >= 4096 the weight-fastest order re-reads each weight tile from DRAM once
// per token tile (the weights of a wide layer do not stay in L2 between token tiles): groups of 2048 tokens
// (16 tiles of 128) were 1.08-1.33x faster on the wide shapes (N / 256 >= 24 weight tiles) and within 0-3.5% of the
// best group size everywhere but one cell. With few weight tiles (N = 4096: 16 tiles, 132 / 16 >= 8 token tiles
// resident per weight tile) the weight-fastest order already shares them and streams the large activation matrix
// once: group 1 was best there (4096 x 14336 at M = 4096: 320 vs 347-377 us). At M <= 1024 no group beat the
// weight-fastest order by more than 4% and some lost 7-12% (28672 x 4096 at M = 1024: 197 vs 212 us), so 1.
int qgemm_raster_m(int config, int m, int n, int num_sms) {
  if (config < 0 || config >= kQGemmNumConfigs) return 1;
  const QGemmConfig& c = kQGemmConfigs[config];
  const int64_t tiles_m = cdiv(std::max(m, 1), c.bm), tiles_n = cdiv(std::max(n, 1), c.bn);
  if (m <= kQGemmRasterMinTokens || std::max(num_sms, 1) / tiles_n >= 8) return 1;
  return int(std::clamp<int64_t>(kQGemmRasterTokens / c.bm, 1, tiles_m));
}

}  // namespace qs::kernels
