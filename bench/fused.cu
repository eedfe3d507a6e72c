// Benchmark of the fused quantization kernels (kernels/norm_quant) against the device copy bandwidth measured in
// the same process: RMSNorm + residual add + INT8 quantization + activation sum (reads x and residual, writes the
// new residual, q, scale, sum), SiLU(gate)*up + quantization, plain per-token quantization. Llama-3-8B widths
// (hidden 4096, intermediate 14336) and Llama-2-70B (8192, 28672); plain quantization at both widths (the
// intermediate one is the engine's MLP input after the SiLU*up GEMM epilogue); rows 1..16384 tokens. Cold L2 for
// every timed launch, median of 15 after 3 warm-ups.
//   bench_fused [out_dir] [--quick]     prints a table; writes out_dir/fused.json (JSON lines)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_timing.cuh"
#include "kernels/common/cuda_check.h"
#include "kernels/norm_quant/norm_quant.h"

using namespace qs;           // NOLINT
using namespace qs::kernels;  // NOLINT
using qs::bench::Dev;
using qs::bench::median_ms;

namespace {

__global__ void fill_half(__half* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 16, x *= 0x7feb352d, x ^= x >> 15;
    p[i] = __float2half_rn(float(x & 0xffff) / 16384.0f - 2.0f);
  }
}


}  // namespace

int main(int argc, char** argv) {
  std::string out_dir = ".";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else out_dir = argv[i];
  }
  cudaDeviceProp prop;
  QS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  Dev flush(qs::bench::kL2FlushBytes);
  const int reps = quick ? 5 : 15;
  double copy_tbs = 0;
  {
    const size_t n = size_t(1) << 30;
    Dev a(n), b(n);
    fill_half<<<1024, 256>>>(a.as<__half>(), int64_t(n / 2), 1);
    const float ms =
        median_ms([&] { QS_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, n, cudaMemcpyDeviceToDevice)); }, 10, flush.p);
    copy_tbs = 2.0 * double(n) / (ms * 1e-3) / 1e12;
  }
  std::printf("device %s; copy bandwidth %.3f TB/s (read+write); L2 flush %s\n", prop.name, copy_tbs,
              qs::bench::flush_name());
  std::FILE* js = std::fopen((out_dir + "/fused.json").c_str(), "w");
  if (js) std::fprintf(js, "{\"device\":\"%s\",\"copy_tbs\":%.4f}\n", prop.name, copy_tbs);
  std::printf("\n%-14s %6s %6s | %9s %7s %6s\n", "op", "rows", "cols", "us", "TB/s", "%copy");
  const std::vector<int> rows_list =
      quick ? std::vector<int>{256, 8192} : std::vector<int>{1, 64, 256, 1024, 4096, 8192, 16384};
  for (int hidden : {4096, 8192}) {
    const int inter = hidden == 4096 ? 14336 : 28672;
    for (int rows : rows_list) {
      const size_t nh = size_t(rows) * hidden, ni = size_t(rows) * inter;
      Dev x(nh * 2), res(nh * 2), w(size_t(hidden) * 2), gu(ni * 4), q(std::max(nh, ni)), s(size_t(rows) * 2),
          xs(size_t(rows) * 2);
      fill_half<<<1024, 256>>>(x.as<__half>(), int64_t(nh), 2);
      fill_half<<<1024, 256>>>(res.as<__half>(), int64_t(nh), 3);
      fill_half<<<64, 256>>>(w.as<__half>(), hidden, 4);
      fill_half<<<1024, 256>>>(gu.as<__half>(), int64_t(2 * ni), 5);
      const QuantOut o{q.as<int8_t>(), s.as<uint16_t>(), xs.as<uint16_t>()};
      struct Case {
        const char* name;
        int cols;
        double bytes;
        float ms;
      };
      std::vector<Case> cases;
      {
        RmsNormQuantParams p;
        p.x = x.as<uint16_t>(); p.residual_in = res.as<uint16_t>(); p.residual_out = res.as<uint16_t>();
        p.weight = w.as<uint16_t>(); p.rows = rows; p.cols = hidden; p.out = o;
        const float ms = median_ms([&] { rmsnorm_quant(p, 0).throw_if_error(); }, reps, flush.p);
        cases.push_back({"rmsnorm+res", hidden, double(nh) * (2 + 2 + 2 + 1) + rows * 4.0, ms});
      }
      {
        SiluMulQuantParams p;
        p.gate_up = gu.as<uint16_t>(); p.rows = rows; p.cols = inter; p.out = o;
        const float ms = median_ms([&] { silu_mul_quant(p, 0).throw_if_error(); }, reps, flush.p);
        cases.push_back({"silu_mul", inter, double(ni) * (4 + 1) + rows * 4.0, ms});
      }
      {
        ActQuantParams p;
        p.x = x.as<uint16_t>(); p.rows = rows; p.cols = hidden; p.out = o;
        const float ms = median_ms([&] { act_quant(p, 0).throw_if_error(); }, reps, flush.p);
        cases.push_back({"act_quant", hidden, double(nh) * (2 + 1) + rows * 4.0, ms});
      }
      {  // the engine's MLP input: the SiLU*up GEMM epilogue's FP16 output, quantized
        ActQuantParams p;
        p.x = gu.as<uint16_t>(); p.rows = rows; p.cols = inter; p.out = o;
        const float ms = median_ms([&] { act_quant(p, 0).throw_if_error(); }, reps, flush.p);
        cases.push_back({"act_quant", inter, double(ni) * (2 + 1) + rows * 4.0, ms});
      }
      for (const Case& c : cases) {
        const double tbs = c.bytes / (c.ms * 1e-3) / 1e12;
        std::printf("%-14s %6d %6d | %9.1f %7.3f %5.0f%%\n", c.name, rows, c.cols, c.ms * 1e3, tbs,
                    100 * tbs / copy_tbs);
        if (js)
          std::fprintf(js, "{\"op\":\"%s\",\"rows\":%d,\"cols\":%d,\"us\":%.2f,\"tbs\":%.4f}\n", c.name, rows, c.cols,
                       c.ms * 1e3, tbs);
      }
    }
  }
  if (js) std::fclose(js);
  return 0;
}
