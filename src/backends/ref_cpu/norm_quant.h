// CPU references of the fused quantization kernels (kernels/norm_quant): RMSNorm (+ residual add) + per-token
// INT8 quantization (+ activation sum), SiLU(gate)*up + quantization, plain per-token quantization. They take
// the kernels' parameter structs with host pointers; numerics are defined in norm_quant_params.h and the
// quantizer is formats.h quantize_act_row.
#pragma once

#include "kernels/norm_quant/norm_quant_params.h"

namespace qs::ref_cpu {

void rmsnorm_quant(const kernels::RmsNormQuantParams& p);
void silu_mul_quant(const kernels::SiluMulQuantParams& p);
void act_quant(const kernels::ActQuantParams& p);

// FP8 variants: the same y quantized with formats/fp8.h quantize_fp8_row into p.fp8 (e4m3 + FP32 scale).
void rmsnorm_quant_fp8(const kernels::RmsNormQuantParams& p);
void silu_mul_quant_fp8(const kernels::SiluMulQuantParams& p);
void act_quant_fp8(const kernels::ActQuantParams& p);

}  // namespace qs::ref_cpu
