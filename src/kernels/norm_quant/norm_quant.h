// Fused normalization / activation + per-token INT8 quantization kernels (numerics in norm_quant_params.h):
// RMSNorm (+ residual add) + quantization (+ activation sum), SiLU(gate)*up + quantization, plain per-token
// quantization; and their FP8 variants (e4m3 + FP32 per-token scale into the params' `fp8` output, the FP8
// baseline's activations). Launch only; one CTA per row.
#pragma once

#include <cuda_runtime.h>

#include "core/status.h"
#include "kernels/norm_quant/norm_quant_params.h"

namespace qs::kernels {

Status rmsnorm_quant(const RmsNormQuantParams& p, cudaStream_t stream);
Status silu_mul_quant(const SiluMulQuantParams& p, cudaStream_t stream);
Status act_quant(const ActQuantParams& p, cudaStream_t stream);

// FP8 e4m3 outputs (p.fp8; p.out is ignored): bit-exact with formats/fp8.h quantize_fp8_row on the same y.
Status rmsnorm_quant_fp8(const RmsNormQuantParams& p, cudaStream_t stream);
Status silu_mul_quant_fp8(const SiluMulQuantParams& p, cudaStream_t stream);
Status act_quant_fp8(const ActQuantParams& p, cudaStream_t stream);

}  // namespace qs::kernels
