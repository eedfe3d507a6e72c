// CPU linear benchmark: the optimized CPU backend's GEMM against the reference backend's (the baseline), same
// process, same inputs, on qs-llama-tiny's linear shapes at a 2048-token window (the perplexity workload).
// Prints GFLOP/s and the speedup. Usage: bench_cpu_linear [m=2048]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/ref_cpu/ops.h"
#include "core/thread_pool.h"

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? std::atoll(argv[1]) : 2048;
  const int64_t shapes[][2] = {{1024, 512}, {512, 512}, {3072, 512}, {512, 1536}, {8192, 512}};  // (n, k)
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  std::printf("threads %d, m = %lld\n| n | k | ref GFLOP/s | cpu GFLOP/s | speedup |\n|---|---|---|---|---|\n",
              qs::num_threads(), (long long)m);
  for (const auto& s : shapes) {
    const int64_t n = s[0], k = s[1];
    std::vector<float> x(size_t(m * k)), w(size_t(n * k)), y(size_t(m * n));
    for (auto& v : x) v = dist(rng);
    for (auto& v : w) v = dist(rng);
    auto time_of = [&](auto fn) {
      std::vector<double> t;
      for (int r = 0; r < 3; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(t.begin(), t.end());
      return t[1];
    };
    const double tr = time_of([&] { qs::backends::ref_cpu::linear(x.data(), w.data(), nullptr, m, k, n, y.data()); });
    const double tc = time_of([&] { qs::backends::cpu::linear(x.data(), w.data(), nullptr, m, k, n, y.data()); });
    const double fl = 2.0 * double(m) * double(n) * double(k);
    std::printf("| %lld | %lld | %.1f | %.1f | %.2fx |\n", (long long)n, (long long)k, fl / tr * 1e-9, fl / tc * 1e-9,
                tr / tc);
  }
}
