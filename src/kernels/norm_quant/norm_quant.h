// Fused normalization / activation + per-token INT8 quantization kernels (numerics in norm_quant_params.h):
// RMSNorm (+ residual add) + quantization (+ activation sum), SiLU(gate)*up + quantization, plain per-token
// quantization. Launch only; one CTA per row.
#pragma once

#include <cuda_runtime.h>

#include "core/status.h"
#include "kernels/norm_quant/norm_quant_params.h"

namespace qs::kernels {

Status rmsnorm_quant(const RmsNormQuantParams& p, cudaStream_t stream);
Status silu_mul_quant(const SiluMulQuantParams& p, cudaStream_t stream);
Status act_quant(const ActQuantParams& p, cudaStream_t stream);

}  // namespace qs::kernels
