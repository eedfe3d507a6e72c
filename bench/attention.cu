// Benchmark of decode attention over the paged KV cache (KV4, the FP16 cache and the FP8 e4m3 cache of the FP8
// baseline, same run) and of causal prefill
// attention, with the device copy bandwidth measured in the same process. Decode: Llama-3-8B heads (32 q / 8 kv)
// and Llama-2-70B heads (64 / 8), head_dim 128, page 64, batch {1,8,32,64,128,256} x context {512..32768}
// (skipping batch x context > 4M tokens); bandwidth is counted on the bytes the kernel must read (KV data +
// scales/zeros + q) plus the output. Every timed launch starts with a cold L2 (bench_timing.cuh: a read pass over
// 256 MiB); median of 15 after 3 warm-ups, CUDA events. Prefill: Llama-3-8B heads, 16384 tokens split into
// sequences of 1024..8192, causal FLOPs = 4 * tokens_pairs * head_dim * heads. The PyTorch SDPA baselines run in
// bench/sdpa_baseline.py in the same device call (scripts/gpu/attention.sh).
// --flush-dirty times after the old 256 MiB memset instead, and a short table at the end compares the two on a few
// decode shapes.
//   bench_attention [out_dir] [--quick] [--flush-dirty]   prints a table; writes out_dir/attention.json (JSON lines)
//   bench_attention [out_dir] --prefill      the prefill table only
//   bench_attention [out_dir] --plan-sweep   KV4 decode only: every split (1..8 chunks of one warp, 1..4 chunks of 2
//     or 4 warps) per shape (batch 32-1024, context 512-4096 up to 2M tokens, both head configurations) against
//     plan_decode's choice; writes out_dir/decode_plan.json
//   bench_attention [out_dir] --decode B:C[,B:C...]   KV4 and FP16-cache decode at these shapes only (Llama-3-8B
//     heads, plan_decode's split): the short run for profiling (ncu) and A/B runs of kernel variants
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention/decode_attention.h"
#include "kernels/attention/prefill_attention.h"
#include "bench_timing.cuh"
#include "kernels/common/cuda_check.h"

using namespace qs;           // NOLINT
using namespace qs::kernels;  // NOLINT
using qs::bench::Dev;
using qs::bench::median_ms;

namespace {

__global__ void fill_random(uint32_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 16, x *= 0x7feb352d, x ^= x >> 15, x *= 0x846ca68b, x ^= x >> 16;
    p[i] = x;
  }
}
// Random fp16 values in [-2, 2).
__global__ void fill_half(__half* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 16, x *= 0x7feb352d, x ^= x >> 15;
    p[i] = __float2half_rn(float(x & 0xffff) / 16384.0f - 2.0f);
  }
}
// Valid KV4 scales (0.02..0.1) and zeros (0..15) for every (page, head) block of a pool.
__global__ void fix_scales(uint8_t* pool, KvCacheLayout L, int64_t blocks) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < blocks * L.page_size;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t blk = i / L.page_size;
    const int tok = int(i % L.page_size);
    uint8_t* b = pool + blk * L.block_bytes();
    *reinterpret_cast<__half*>(b + L.scale_offset(tok)) = __float2half_rn(0.02f + 0.08f * float(i % 97) / 97.0f);
    *reinterpret_cast<__half*>(b + L.zero_offset(tok)) = __float2half_rn(float(i % 16));
  }
}

// FP8 blocks: random e4m3 codes without the NaN code (0x7f / 0xff), FP16 scales 0.002..0.01.
__global__ void fix_fp8(uint8_t* pool, KvCacheLayout L, int64_t blocks) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < blocks * L.page_size;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t blk = i / L.page_size;
    const int tok = int(i % L.page_size);
    uint8_t* b = pool + blk * L.block_bytes();
    uint8_t* d = b + L.data_offset(tok);
    for (int j = 0; j < L.head_dim; ++j)
      if ((d[j] & 0x7f) == 0x7f) d[j] ^= 1;
    *reinterpret_cast<__half*>(b + L.scale_offset(tok)) = __float2half_rn(0.002f + 0.008f * float(i % 89) / 89.0f);
  }
}

void rand_bytes(void* p, size_t bytes, uint32_t seed) {
  fill_random<<<1024, 256>>>(static_cast<uint32_t*>(p), int64_t(bytes / 4), seed);
  QS_CUDA_CHECK(cudaGetLastError());
}


double copy_bandwidth(const Dev& flush) {
  const size_t n = size_t(1) << 30;
  Dev a(n), b(n);
  rand_bytes(a.p, n, 1);
  const float ms = median_ms([&] { QS_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, n, cudaMemcpyDeviceToDevice)); }, 10, flush.p);
  return 2.0 * double(n) / (ms * 1e-3) / 1e12;  // TB/s, read + write
}

struct DecodeResult {
  float ms = 0;
  double bytes = 0;
};

// chunks > 0: time the plan with that split (plan_decode_chunks, `warps` per chunk) instead of plan_decode's choice.
DecodeResult bench_decode(int batch, int hq, int hkv, int ctx, KvDType dt, int sms, const Dev& flush, int reps,
                          int chunks = 0, int warps = 1) {
  KvCacheLayout L{64, hkv, 128, dt};
  const int pages_per = (ctx + 63) / 64;
  const int64_t pages = int64_t(batch) * pages_per;
  Dev kp(size_t(pages * L.page_bytes())), vp(size_t(pages * L.page_bytes()));
  rand_bytes(kp.p, size_t(pages * L.page_bytes()), 3);
  rand_bytes(vp.p, size_t(pages * L.page_bytes()), 4);
  if (dt == KvDType::kKv4) {
    fix_scales<<<1024, 256>>>(kp.as<uint8_t>(), L, pages * hkv);
    fix_scales<<<1024, 256>>>(vp.as<uint8_t>(), L, pages * hkv);
  } else if (dt == KvDType::kFp8) {
    fix_fp8<<<1024, 256>>>(kp.as<uint8_t>(), L, pages * hkv);
    fix_fp8<<<1024, 256>>>(vp.as<uint8_t>(), L, pages * hkv);
  } else {  // random bits are not valid fp16 (NaN/inf): fill real values
    fill_half<<<1024, 256>>>(kp.as<__half>(), pages * L.page_bytes() / 2, 5);
    fill_half<<<1024, 256>>>(vp.as<__half>(), pages * L.page_bytes() / 2, 6);
  }
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(7));
  Dev bt(perm.size() * 4), lens(size_t(batch) * 4), q(size_t(batch) * hq * 128 * 2), out(size_t(batch) * hq * 128 * 2);
  QS_CUDA_CHECK(cudaMemcpy(bt.p, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
  std::vector<int32_t> cl(size_t(batch), ctx);
  QS_CUDA_CHECK(cudaMemcpy(lens.p, cl.data(), cl.size() * 4, cudaMemcpyHostToDevice));
  fill_half<<<256, 256>>>(q.as<__half>(), int64_t(batch) * hq * 128, 8);
  const DecodePlan plan =
      chunks > 0 ? plan_decode_chunks(batch, hq, L, ctx, chunks, warps) : plan_decode(batch, hq, L, ctx, sms);
  Dev ws(plan.workspace_bytes);
  DecodeParams p;
  p.q = q.as<uint16_t>(); p.out = out.as<uint16_t>();
  p.k_pool = kp.as<uint8_t>(); p.v_pool = vp.as<uint8_t>(); p.layout = L;
  p.block_table = bt.as<int32_t>(); p.block_table_stride = pages_per;
  p.context_lens = lens.as<int32_t>(); p.batch = batch; p.num_q_heads = hq;
  p.softmax_scale = 1.0f / std::sqrt(128.0f);
  DecodeResult r;
  r.ms = median_ms([&] { run_decode(p, plan, ws.p, 0).throw_if_error(); }, reps, flush.p);
  const double per_token = dt == KvDType::kKv4 ? 2.0 * (64 + 4) : dt == KvDType::kFp8 ? 2.0 * (128 + 2) : 2.0 * 256;
  r.bytes = double(batch) * hkv * ctx * per_token + 2.0 * batch * hq * 128 * 2;
  return r;
}

float bench_prefill(int len, int hq, int hkv, const Dev& flush, int reps, double* flops) {
  const int total = 16384, batch = total / len;
  Dev q(size_t(total) * hq * 128 * 2), k(size_t(total) * hkv * 128 * 2), v(size_t(total) * hkv * 128 * 2),
      out(size_t(total) * hq * 128 * 2), cu(size_t(batch + 1) * 4);
  fill_half<<<1024, 256>>>(q.as<__half>(), int64_t(total) * hq * 128, 1);
  fill_half<<<1024, 256>>>(k.as<__half>(), int64_t(total) * hkv * 128, 2);
  fill_half<<<1024, 256>>>(v.as<__half>(), int64_t(total) * hkv * 128, 3);
  std::vector<int32_t> c(size_t(batch + 1));
  for (int i = 0; i <= batch; ++i) c[i] = i * len;
  QS_CUDA_CHECK(cudaMemcpy(cu.p, c.data(), c.size() * 4, cudaMemcpyHostToDevice));
  PrefillParams p;
  p.q = q.as<uint16_t>(); p.k = k.as<uint16_t>(); p.v = v.as<uint16_t>(); p.out = out.as<uint16_t>();
  p.cu_seqlens = cu.as<int32_t>(); p.batch = batch; p.max_q_len = len;
  p.num_q_heads = hq; p.num_kv_heads = hkv; p.head_dim = 128; p.softmax_scale = 1.0f / std::sqrt(128.0f);
  *flops = 4.0 * batch * hq * 128.0 * (double(len) * (len + 1) / 2);
  return median_ms([&] { run_prefill(p, 0).throw_if_error(); }, reps, flush.p);
}

// KV4 decode at every split (1..8 chunks with one warp per chunk, 1..4 chunks with 2 or 4 warps per chunk) against
// plan_decode's choice: the data the plan's cost model is fitted to. Prints per shape the time of each split, the
// best, and the plan's pick with its loss against the best.
int plan_sweep(const std::string& out_dir, const cudaDeviceProp& prop, double copy_tbs, const Dev& flush) {
  std::FILE* js = std::fopen((out_dir + "/decode_plan.json").c_str(), "w");
  std::printf("device %s, %d SMs; copy bandwidth %.3f TB/s; L2 flush %s\n", prop.name, prop.multiProcessorCount,
              copy_tbs, qs::bench::flush_name());
  if (js) std::fprintf(js, "{\"device\":\"%s\",\"sms\":%d,\"copy_tbs\":%.4f}\n", prop.name,
                       prop.multiProcessorCount, copy_tbs);
  struct Split { int chunks, warps; };
  std::vector<Split> splits;
  for (int c = 1; c <= 8; ++c) splits.push_back({c, 1});
  for (int w : {2, 4})
    for (int c = 1; c <= 4; ++c) splits.push_back({c, w});
  std::printf("\n%-7s %5s %5s |", "kv4", "batch", "ctx");
  for (const Split& sp : splits) std::printf(" %4dx%d", sp.chunks, sp.warps);
  std::printf(" | best  plan  loss  %%copy(plan)   (chunks x warps per chunk)\n");
  struct Model { const char* name; int hq, hkv; };
  double worst = 0;
  for (const Model& m : {Model{"l3-8b", 32, 8}, Model{"l2-70b", 64, 8}})
    for (int b : {32, 64, 128, 256, 512, 1024})
      for (int ctx : {512, 1024, 2048, 4096}) {
        if (int64_t(b) * ctx > (int64_t(2) << 20)) continue;
        const KvCacheLayout L{64, m.hkv, 128, KvDType::kKv4};
        const DecodePlan plan = plan_decode(b, m.hq, L, ctx, prop.multiProcessorCount);
        std::vector<float> us(splits.size());
        size_t best = 0;
        int pick = -1;
        double bytes = 0;
        std::printf("%-7s %5d %5d |", m.name, b, ctx);
        for (size_t i = 0; i < splits.size(); ++i) {
          const DecodePlan pc = plan_decode_chunks(b, m.hq, L, ctx, splits[i].chunks, splits[i].warps);
          if (i > 0 && splits[i - 1].warps == splits[i].warps &&
              pc.max_chunks == plan_decode_chunks(b, m.hq, L, ctx, splits[i - 1].chunks, splits[i].warps).max_chunks) {
            us[i] = us[i - 1];  // same split after rounding (64-token minimum)
          } else {
            const DecodeResult r = bench_decode(b, m.hq, m.hkv, ctx, KvDType::kKv4, prop.multiProcessorCount, flush,
                                                9, splits[i].chunks, splits[i].warps);
            us[i] = r.ms * 1e3f;
            bytes = r.bytes;
          }
          if (pc.max_chunks == plan.max_chunks && pc.warps_per_chunk == plan.warps_per_chunk && pick < 0)
            pick = int(i);
          if (us[i] < us[best]) best = i;
          std::printf(" %6.1f", us[i]);
        }
        const float plan_us = pick >= 0 ? us[size_t(pick)]
                                        : bench_decode(b, m.hq, m.hkv, ctx, KvDType::kKv4, prop.multiProcessorCount,
                                                       flush, 9).ms * 1e3f;
        const double loss = plan_us / us[best] - 1;
        worst = std::max(worst, loss);
        std::printf(" | %2dx%d  %2dx%d  %4.0f%%  %4.0f%%\n", splits[best].chunks, splits[best].warps, plan.max_chunks,
                    plan.warps_per_chunk, 100 * loss, 100 * bytes / (plan_us * 1e-6) / 1e12 / copy_tbs);
        if (js) {
          std::fprintf(js, "{\"model\":\"%s\",\"batch\":%d,\"ctx\":%d,\"plan_chunks\":%d,\"plan_warps\":%d,"
                       "\"plan_us\":%.2f", m.name, b, ctx, plan.max_chunks, plan.warps_per_chunk, plan_us);
          for (int w : {1, 2, 4}) {  // "us": one warp per chunk, chunks 1..8; "us_w2" / "us_w4": chunks 1..4
            std::fprintf(js, w == 1 ? ",\"us\":[" : ",\"us_w%d\":[", w);
            const char* sep = "";
            for (size_t i = 0; i < splits.size(); ++i)
              if (splits[i].warps == w) std::fprintf(js, "%s%.2f", sep, us[i]), sep = ",";
            std::fprintf(js, "]");
          }
          std::fprintf(js, ",\"bytes\":%.0f}\n", bytes);
        }
        std::fflush(stdout);
      }
  std::printf("worst loss of the plan against the best split: %.0f%%\n", 100 * worst);
  if (js) std::fclose(js);
  return 0;
}

// Causal prefill over 16384 tokens per call, Llama-3-8B heads, sequences of 1024..8192: a table and JSON lines;
// closes `js`.
int bench_prefill_table(std::FILE* js, const Dev& flush, int reps) {
  std::printf("\n%-8s %6s %6s | %9s %8s\n", "prefill", "len", "batch", "us", "TFLOP/s");
  for (int len : {1024, 2048, 4096, 8192}) {
    double flops = 0;
    const float ms = bench_prefill(len, 32, 8, flush, reps, &flops);
    std::printf("%-8s %6d %6d | %9.1f %8.1f\n", "l3-8b", len, 16384 / len, ms * 1e3, flops / (ms * 1e-3) / 1e12);
    if (js)
      std::fprintf(js, "{\"op\":\"prefill\",\"len\":%d,\"batch\":%d,\"us\":%.2f,\"tflops\":%.2f}\n", len, 16384 / len,
                   ms * 1e3, flops / (ms * 1e-3) / 1e12);
  }
  if (js) std::fclose(js);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_dir = ".";
  bool quick = false, sweep = false, prefill_only = false;
  std::vector<std::pair<int, int>> shapes;  // --decode B:C,...
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--decode") == 0 && i + 1 < argc) {
      for (const char* s = argv[++i]; *s;) {
        int b = 0, c = 0, n = 0;
        if (std::sscanf(s, "%d:%d%n", &b, &c, &n) != 2 || b <= 0 || c <= 0) {
          std::fprintf(stderr, "--decode wants BATCH:CTX[,BATCH:CTX...], got '%s'\n", argv[i]);
          return 2;
        }
        shapes.emplace_back(b, c);
        s += n;
        if (*s == ',') ++s;
      }
    }
    else if (std::strcmp(argv[i], "--plan-sweep") == 0) sweep = true;
    else if (std::strcmp(argv[i], "--prefill") == 0) prefill_only = true;
    else if (std::strcmp(argv[i], "--flush-dirty") == 0) qs::bench::set_flush(qs::bench::Flush::kDirty);
    else out_dir = argv[i];
  }
  cudaDeviceProp prop;
  QS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  Dev flush(qs::bench::kL2FlushBytes);
  const double copy_tbs = copy_bandwidth(flush);
  if (sweep) return plan_sweep(out_dir, prop, copy_tbs, flush);
  std::FILE* js = std::fopen((out_dir + "/attention.json").c_str(), "w");
  std::printf("device %s, %d SMs; copy bandwidth %.3f TB/s (read+write); L2 flush %s\n", prop.name,
              prop.multiProcessorCount, copy_tbs, qs::bench::flush_name());
  if (js) std::fprintf(js, "{\"device\":\"%s\",\"copy_tbs\":%.4f}\n", prop.name, copy_tbs);
  const int reps = quick ? 5 : 15;
  if (prefill_only) return bench_prefill_table(js, flush, reps);
  if (!shapes.empty()) {
    std::printf("\n%-8s %5s %6s | %9s %7s %6s | %9s %7s %6s\n", "decode", "batch", "ctx", "kv4 us", "TB/s", "%copy",
                "fp16 us", "TB/s", "%copy");
    for (const auto& [b, c] : shapes) {
      const DecodeResult k4 = bench_decode(b, 32, 8, c, KvDType::kKv4, prop.multiProcessorCount, flush, reps);
      const DecodeResult f16 = bench_decode(b, 32, 8, c, KvDType::kFp16, prop.multiProcessorCount, flush, reps);
      const double t4 = k4.bytes / (k4.ms * 1e-3) / 1e12, t16 = f16.bytes / (f16.ms * 1e-3) / 1e12;
      std::printf("%-8s %5d %6d | %9.1f %7.3f %5.0f%% | %9.1f %7.3f %5.0f%%\n", "l3-8b", b, c, k4.ms * 1e3, t4,
                  100 * t4 / copy_tbs, f16.ms * 1e3, t16, 100 * t16 / copy_tbs);
      std::fflush(stdout);
    }
    return 0;
  }
  std::printf("\n%-8s %5s %6s | %9s %7s %6s | %9s %7s %6s | %9s %7s %6s | %8s %8s\n", "decode", "batch", "ctx",
              "kv4 us", "TB/s", "%copy", "fp16 us", "TB/s", "%copy", "fp8 us", "TB/s", "%copy", "fp16/kv4",
              "fp8/kv4");
  struct Model { const char* name; int hq, hkv; };
  const Model models[] = {{"l3-8b", 32, 8}, {"l2-70b", 64, 8}};
  const std::vector<int> batches = quick ? std::vector<int>{1, 64} : std::vector<int>{1, 8, 32, 64, 128, 256};
  const std::vector<int> ctxs = quick ? std::vector<int>{1024, 4096}
                                      : std::vector<int>{512, 1024, 2048, 4096, 8192, 32768};
  for (const Model& m : models)
    for (int b : batches)
      for (int c : ctxs) {
        if (int64_t(b) * c > (int64_t(4) << 20)) continue;
        const DecodeResult k4 = bench_decode(b, m.hq, m.hkv, c, KvDType::kKv4, prop.multiProcessorCount, flush, reps);
        const DecodeResult f16 = bench_decode(b, m.hq, m.hkv, c, KvDType::kFp16, prop.multiProcessorCount, flush, reps);
        const DecodeResult f8 = bench_decode(b, m.hq, m.hkv, c, KvDType::kFp8, prop.multiProcessorCount, flush, reps);
        const double t4 = k4.bytes / (k4.ms * 1e-3) / 1e12, t16 = f16.bytes / (f16.ms * 1e-3) / 1e12;
        const double t8 = f8.bytes / (f8.ms * 1e-3) / 1e12;
        std::printf("%-8s %5d %6d | %9.1f %7.3f %5.0f%% | %9.1f %7.3f %5.0f%% | %9.1f %7.3f %5.0f%% | %7.2fx %7.2fx\n",
                    m.name, b, c, k4.ms * 1e3, t4, 100 * t4 / copy_tbs, f16.ms * 1e3, t16, 100 * t16 / copy_tbs,
                    f8.ms * 1e3, t8, 100 * t8 / copy_tbs, f16.ms / k4.ms, f8.ms / k4.ms);
        if (js)
          std::fprintf(js,
                       "{\"op\":\"decode\",\"model\":\"%s\",\"batch\":%d,\"ctx\":%d,\"kv4_us\":%.2f,\"kv4_tbs\":%.4f,"
                       "\"fp16_us\":%.2f,\"fp16_tbs\":%.4f,\"fp8_us\":%.2f,\"fp8_tbs\":%.4f}\n",
                       m.name, b, c, k4.ms * 1e3, t4, f16.ms * 1e3, t16, f8.ms * 1e3, t8);
        std::fflush(stdout);
      }
  // The two ways of making L2 cold on the same shapes (KV4 decode): what the dirty memset charges a kernel.
  std::printf("\n%-8s %5s %6s | %9s %6s | %9s %6s  (KV4 decode, L2 flush)\n", "flush", "batch", "ctx", "clean us",
              "%copy", "dirty us", "%copy");
  const qs::bench::Flush mode = qs::bench::flush_mode();
  for (const auto& [b, c] : std::vector<std::pair<int, int>>{{64, 1024}, {64, 4096}, {256, 1024}}) {
    DecodeResult r[2];
    for (int f = 0; f < 2; ++f) {
      qs::bench::set_flush(f ? qs::bench::Flush::kDirty : qs::bench::Flush::kClean);
      r[f] = bench_decode(b, 32, 8, c, KvDType::kKv4, prop.multiProcessorCount, flush, reps);
    }
    auto pct = [&](const DecodeResult& x) { return 100 * x.bytes / (x.ms * 1e-3) / 1e12 / copy_tbs; };
    std::printf("%-8s %5d %6d | %9.1f %5.0f%% | %9.1f %5.0f%%\n", "l3-8b", b, c, r[0].ms * 1e3, pct(r[0]),
                r[1].ms * 1e3, pct(r[1]));
    if (js)
      std::fprintf(js, "{\"op\":\"flush\",\"batch\":%d,\"ctx\":%d,\"clean_us\":%.2f,\"dirty_us\":%.2f}\n", b, c,
                   r[0].ms * 1e3, r[1].ms * 1e3);
  }
  qs::bench::set_flush(mode);
  return bench_prefill_table(js, flush, reps);
}
