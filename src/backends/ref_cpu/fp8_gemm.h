// CPU reference of the FP8 baseline linear layer (backends/cuda/fp8_gemm): weights quantized per output channel
// to e4m3 (formats/fp8.h quantize_fp8_row, FP32 scale = amax / 448), activations per token (the same rule, what
// kernels/norm_quant's _fp8 entry points produce), and
//   y[m][n] = (sum_k e4m3(x[m][k]) * e4m3(w[n][k])) * sx[m] * sw[n] (+ residual[m][n])
// with the sum in FP64 (exact for k < 2^20: every product of two e4m3 values is exact). Also the host helper that
// quantizes a weight at upload time.
#pragma once

#include <cstdint>
#include <vector>

namespace qs::ref_cpu {

struct Fp8Weights {
  int n = 0, k = 0;
  std::vector<uint8_t> q;    // e4m3 [n][k]
  std::vector<float> scale;  // FP32 [n]: amax of the row / 448
};

// Per-output-channel quantization of w [n][k] (FP32, or FP16 bits for the _f16 variant).
Fp8Weights quantize_fp8_weights(const float* w, int n, int k);
Fp8Weights quantize_fp8_weights_f16(const uint16_t* w, int n, int k);

// y [m][n] FP32 (the FP64 result rounded once) from x e4m3 [m][k] with FP32 scales sx [m]; residual FP16 [m][n]
// or null.
void fp8_gemm(const uint8_t* x, const float* sx, int m, const Fp8Weights& w, const uint16_t* residual, float* y);

}  // namespace qs::ref_cpu
