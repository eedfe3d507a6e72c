// Exact reference GEMMs for the quantized linears (QSERVE.md sections 1 and 3, formats/formats.h): W4A8 with
// per-channel 4-bit weights, W4A8 with progressive g128 weights (dequantized to INT8 exactly as the GPU does),
// and W8A8. The integer part is exact (INT32 accumulators, which callers may ask for); the epilogue is FP32 in a
// fixed order:
//   per-channel: y = float(acc) * s[n] * sx[m] - sz[n] * xsum[m]
//   g128:        y = float(acc) * s1[n] * sx[m]
//   w8a8:        y = float(acc) * s_w[n] * sx[m]
// then + bias[n] + residual[m, n] when given. Plain loops over output rows with qs::parallel_for (results do not
// depend on the thread count). All pointers are host memory; weights are in the canonical layouts of formats.h.
#pragma once

#include <cstdint>

#include "formats/kinds.h"

namespace qs::ref_cpu {

const char* weight_format_name(WeightFormat v);  // "w4a8_per_channel", "w4a8_g128", "w8a8"

// Quantized weights W[n, k] in the canonical layout.
struct QGemmWeights {
  WeightFormat variant = WeightFormat::kW4A8PerChannel;
  int64_t n = 0, k = 0;
  const uint8_t* q = nullptr;       // W4: packed U8 [n, k/2], low nibble = even k; W8A8: INT8 [n, k] (as bytes)
  const uint16_t* scale = nullptr;  // FP16 [n]: s (per-channel), s1 (g128), s_w (w8a8)
  const uint16_t* szero = nullptr;  // FP16 [n]: scaled zero z*s (per-channel only)
  const uint8_t* s2 = nullptr;      // U8 [n, k/128]: level-2 scale (g128 only)
  const int8_t* zn = nullptr;       // I8 [n, k/128]: negated scaled zero -(z*s2) (g128 only)
};

// Per-token INT8 activations X[m, k] (formats.h quantize_act_row).
struct QGemmActs {
  int64_t m = 0;
  const int8_t* q = nullptr;        // INT8 [m, k], row-major
  const uint16_t* scale = nullptr;  // FP16 [m]: sx
  const uint16_t* sum = nullptr;    // FP16 [m]: xsum (per-channel W4A8 only)
};

// Optional epilogue inputs (nullptr = absent).
struct QGemmEpilogue {
  const uint16_t* bias = nullptr;      // FP16 [n]
  const uint16_t* residual = nullptr;  // FP16 [m, n], row-major
};

// Validates shapes and pointers (throws qs::Error with a message naming the problem).
void check_qgemm_args(const QGemmWeights& w, const QGemmActs& x);

// y[m, n] (FP32, row-major) = epilogue(sum_k x[m,k] * w8[n,k]); acc (optional, INT32 [m, n]) gets the exact
// integer accumulators. y may be nullptr when only acc is wanted.
void qgemm(const QGemmWeights& w, const QGemmActs& x, const QGemmEpilogue& epi, float* y, int32_t* acc = nullptr);

// The integer weight value the tensor cores multiply at (n, k): the raw nibble 0..15 (per-channel), the
// dequantized INT8 (g128) or the INT8 weight (w8a8).
int32_t qgemm_int_weight(const QGemmWeights& w, int64_t n, int64_t k);

// Dequantized real weights W[n, k] (FP32, row-major [n, k]) such that y ~= dequant(X) * W^T:
//   per-channel: q * s - sz;  g128: w8 * s1;  w8a8: w8 * s_w.
void dequantize_weights(const QGemmWeights& w, float* out);

}  // namespace qs::ref_cpu
