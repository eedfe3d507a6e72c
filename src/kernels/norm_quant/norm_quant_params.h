// Parameters of the fused normalization / activation + INT8 quantization kernels (QSERVE.md section 3). Plain C++
// so the CPU reference (backends/ref_cpu/norm_quant) takes the same structs. FP16 tensors are uint16_t bits.
// Quantization is formats.h quantize_act_row on the fp32 value described for each op (not its fp16 rounding):
//   RMSNorm:  h = x (+ residual, rounded to fp16: the new residual);  r = 1/sqrt(float(sum_k h_k^2 [double]) /
//             cols + eps);  y_k = (h_k * r) * w_k   (fp32, IEEE sqrt and division)
//   SiLU*up:  y_k = (g_k / (1 + exp(-g_k))) * u_k   (fp32; exp is the device expf, within 2 ulp of the host's)
//   plain:    y_k = x_k
// The FP8 entry points (rmsnorm_quant_fp8, ...) quantize the same y with formats/fp8.h quantize_fp8_row into
// `fp8` (e4m3 + FP32 scale = amax / 448, the FP8 baseline's per-token activations) and leave `out` unused.
#pragma once

#include <cstdint>

namespace qs::kernels {

// Output of every quantizing op: INT8 rows + FP16 scale (+ FP16 sum of the quantized row for per-channel W4A8,
// + the exact INT32 sum of the codes for g128 W4A8).
struct QuantOut {
  int8_t* q = nullptr;         // INT8 [rows][cols]
  uint16_t* scale = nullptr;   // FP16 [rows]
  uint16_t* xsum = nullptr;    // FP16 [rows], optional: fp16(scale * sum_k q_k)
  int32_t* qsum = nullptr;     // INT32 [rows], optional: sum_k q_k
};

// Output of the FP8 variants: e4m3 rows + FP32 per-token scale (the outer-vector scale cuBLASLt takes).
struct Fp8QuantOut {
  uint8_t* q = nullptr;     // e4m3 [rows][cols]
  float* scale = nullptr;   // FP32 [rows]: amax / 448
};

struct RmsNormQuantParams {
  const uint16_t* x = nullptr;            // FP16 [rows][cols]
  const uint16_t* residual_in = nullptr;  // FP16 [rows][cols], optional: h = fp16(x + residual_in)
  uint16_t* residual_out = nullptr;       // FP16 [rows][cols], written with h when residual_in is given
                                          // (may alias residual_in)
  const uint16_t* weight = nullptr;       // FP16 [cols] RMSNorm weight
  float eps = 1e-5f;
  int32_t rows = 0, cols = 0;
  QuantOut out;
  Fp8QuantOut fp8;  // used by the _fp8 entry points instead of `out`
};

struct SiluMulQuantParams {
  const uint16_t* gate_up = nullptr;  // FP16 [rows][2*cols]: gate = columns [0, cols), up = [cols, 2*cols)
  int32_t rows = 0, cols = 0;
  QuantOut out;
  Fp8QuantOut fp8;  // used by the _fp8 entry points instead of `out`
};

struct ActQuantParams {
  const uint16_t* x = nullptr;  // FP16 [rows][cols]
  int32_t rows = 0, cols = 0;
  QuantOut out;
  Fp8QuantOut fp8;  // used by the _fp8 entry points instead of `out`
};

}  // namespace qs::kernels
