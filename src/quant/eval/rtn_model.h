// In-memory round-to-nearest quantization of an FP model for evaluation baselines (the "RTN" and "W8A8" rows of
// ACCURACY.md) without writing a checkpoint: every decoder-layer linear becomes a model::QuantizedLinear built
// by the quant/ weight quantizers (no clipping, no GPTQ, no transformation), the lm_head becomes the FP16
// lm_head and the embeddings and norms are rounded to FP16, exactly as a quantized checkpoint stores them.
// Schemes: W8A8 (INT8 per-channel weights, per-token INT8 activations), W4A8 per-channel, W4A8 g128, and the
// weight-only W4A16 variants (the same weights, FP32 activations).
#pragma once

#include <string>

#include "model/model.h"

namespace qs::quant::eval {

enum class RtnScheme { kW8A8, kW4A8PerChannel, kW4A8G128, kW4A16PerChannel, kW4A16G128 };

// "w8a8", "w4a8-per-channel", "w4a8-g128", "w4a16-per-channel", "w4a16-g128".
const char* rtn_scheme_name(RtnScheme s);
// Parses a name above; throws qs::Error listing the valid names otherwise.
RtnScheme parse_rtn_scheme(const std::string& s);

// Quantizes `m` in place (its linears must be model::FpLinear; biases are kept as FP16).
void apply_rtn(model::Model& m, RtnScheme s);

// Rounds the embeddings and norm weights to FP16 and replaces lm_head by model::Fp16Linear (built from the
// current lm_head, which must be an FpLinear or already an Fp16Linear).
void round_fp_parts_to_fp16(model::Model& m);

}  // namespace qs::quant::eval
