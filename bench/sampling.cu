// Benchmark of the GPU sampler (kernels/sampling): time per call for rows x vocab in three settings (greedy;
// temperature 0.8 + top_k 50 + top_p 0.9, the common chat setting; temperature 1 + top_p 0.9 over the full
// vocabulary, the slowest path), logits N(0, 3) with a peaked head. Median of 20 CUDA-event timings after 3
// warm-ups (logits stay L2-resident for small row counts, as in a decode step right after the LM head).
//   bench_sampling [out_dir]     prints a table; writes out_dir/sampling.json (JSON lines)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_timing.cuh"
#include "kernels/common/cuda_check.h"
#include "kernels/sampling/sampling.h"

namespace {

template <typename T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  QS_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(T)));
  QS_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

float time_us(const qs::kernels::SampleParams& p) {
  return 1000.0f * qs::bench::median_ms([&] { qs::kernels::sample(p, 0).throw_if_error(); }, 20, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out_dir = argc > 1 ? argv[1] : ".";
  std::FILE* js = std::fopen((out_dir + "/sampling.json").c_str(), "w");
  std::printf("%7s %5s | %10s %12s %12s\n", "vocab", "rows", "greedy us", "k50 p0.9 us", "full p0.9 us");
  for (int vocab : {32000, 128256, 151936}) {
    const int max_rows = 512;
    std::vector<float> l(size_t(max_rows) * vocab);
    std::mt19937_64 g(1);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (auto& v : l) v = nd(g);
    for (int r = 0; r < max_rows; ++r)
      for (int j = 0; j < 8; ++j) l[size_t(r) * vocab + g() % vocab] += 15.0f;
    float* dl = upload(l);
    for (int rows : {1, 8, 64, 256, 512}) {
      std::vector<uint64_t> seed(static_cast<size_t>(rows)), step(static_cast<size_t>(rows));
      for (int r = 0; r < rows; ++r) seed[size_t(r)] = g(), step[size_t(r)] = uint64_t(r);
      uint64_t* ds = upload(seed);
      uint64_t* dst = upload(step);
      int32_t* out = upload(std::vector<int32_t>(size_t(rows)));
      float us[3];
      for (int mode = 0; mode < 3; ++mode) {
        float* dt = upload(std::vector<float>(size_t(rows), mode == 1 ? 0.8f : 1.0f));
        int32_t* dk = upload(std::vector<int32_t>(size_t(rows), mode == 1 ? 50 : 0));
        float* dp = upload(std::vector<float>(size_t(rows), 0.9f));
        qs::kernels::SampleParams p;
        p.logits = dl;
        p.rows = rows;
        p.vocab = vocab;
        if (mode > 0) p.temperature = dt, p.top_k = dk, p.top_p = dp, p.seed = ds, p.step = dst;
        p.out_token = out;
        us[mode] = time_us(p);
        cudaFree(dt), cudaFree(dk), cudaFree(dp);
      }
      std::printf("%7d %5d | %10.1f %12.1f %12.1f\n", vocab, rows, us[0], us[1], us[2]);
      if (js)
        std::fprintf(js, "{\"vocab\":%d,\"rows\":%d,\"greedy_us\":%.2f,\"k50_p09_us\":%.2f,\"full_p09_us\":%.2f}\n",
                     vocab, rows, us[0], us[1], us[2]);
      std::fflush(stdout);
      cudaFree(ds), cudaFree(dst), cudaFree(out);
    }
    cudaFree(dl);
  }
  if (js) std::fclose(js);
  return 0;
}
