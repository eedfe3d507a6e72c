// Host-side weight fusion for the GPU model runner: linears that read the same input (q/k/v; gate/up) become one
// GEMM whose output rows are the parts' rows back to back. Quantized weights are canonical-layout tensors
// (model/quantized/quantized_linear.h), so fusion is a concatenation of every per-row tensor (packed nibbles,
// scales, scaled zeros, level-2 s2 / zn, bias) along dim 0; the fused GEMM is bit-identical to the separate ones
// (tests/engine/weight_fusion_test.cc). FP weights become FP16 (round to nearest even) on the way.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/linear.h"
#include "model/quantized/quantized_linear.h"

namespace qs::engine {

// Concatenates the output rows of quantized weights with the same variant and input size. A bias is kept when
// any part has one (zeros for the parts without). Throws qs::Error on a variant or K mismatch.
model::QuantizedWeights fuse_quantized_rows(const std::vector<const model::QuantizedWeights*>& parts);

// The rows of `a` and `b` (same variant, input size and row count n) interleaved: row 2j = a's row j, row 2j + 1 =
// b's row j. For gate/up: the layout of the GEMM's SiLU*up epilogue (kernels::QGemmEpilogue::kSiluMul).
model::QuantizedWeights interleave_quantized_rows(const model::QuantizedWeights& a, const model::QuantizedWeights& b);

// FP16 bits of the concatenated rows of F32/F16/BF16 weights [n_i, k] (all the same k).
std::vector<uint16_t> fuse_fp16_rows(const std::vector<const Tensor*>& parts);

// FP16 bits of one F32/F16/BF16 tensor (any shape).
std::vector<uint16_t> to_fp16_bits(const Tensor& t);

// The weight of an FP linear (model::FpLinear or model::Fp16Linear) as F32 [out, in]; its bias (undefined when
// none) through `bias`. Throws qs::Error for any other kind, naming `what`.
const Tensor& fp_linear_weight(const model::Linear& l, const char* what, const Tensor** bias = nullptr);

}  // namespace qs::engine
