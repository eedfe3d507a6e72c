// Quantized linear layers for the model's Linear interface (model/linear.h): the exact W4A8KV4 integer reference
// path of one linear. forward() quantizes each input row to INT8 per token exactly as formats/formats.h
// (quantize_act_row, with the activation sum xsum for per-channel W4), runs the exact integer GEMM reference
// (backends/ref_cpu/gemm_w4a8.h: INT32 accumulation, FP32 epilogue) and writes FP32 outputs. Variants:
//  * W4A8 per-channel: UINT4 q [N, K/2] (canonical packing), FP16 s [N], FP16 scaled zero sz [N];
//  * W4A8 g128 (progressive): UINT4 q [N, K/2], FP16 s1 [N], U8 s2 [N, K/128], I8 zn [N, K/128];
//  * W8A8: INT8 q [N, K], FP16 s [N].
// ActMode::kFloat runs the same weights with unquantized FP32 activations (y = x W_deq^T on
// a backend) for "weight-only" (W4A16) ablations. An optional bias is FP16, added in the GEMM epilogue as the
// device kernel does. Fp16Linear is the FP16 lm_head: weights rounded to FP16 once, FP32 arithmetic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "backends/ref_cpu/gemm_w4a8.h"
#include "core/tensor.h"
#include "model/linear.h"

namespace qs::model {

// The tensors of one quantized linear, in the canonical layouts above (shared storage, not copied).
struct QuantizedWeights {
  WeightFormat variant = WeightFormat::kW4A8PerChannel;
  Tensor qweight;  // U8 [N, K/2] (W4) or I8 [N, K] (W8A8)
  Tensor scale;    // F16 [N]: s (per-channel), s1 (g128), s_w (W8A8)
  Tensor szero;    // F16 [N]: per-channel only
  Tensor s2;       // U8 [N, K/128]: g128 only
  Tensor zn;       // I8 [N, K/128]: g128 only
  Tensor bias;     // optional F16 [N] (undefined Tensor when absent)
};

// How a quantized linear treats its input activations.
enum class ActMode : uint8_t {
  kInt8,   // per-token INT8 (formats.h), exact integer GEMM: the W4A8 / W8A8 reference
  kFloat,  // FP32 activations times the dequantized weights (weight-only quantization, e.g. W4A16)
};

class QuantizedLinear final : public Linear {
 public:
  // Validates dtypes and shapes (qs::Error naming `name` and the offending tensor). `backend` runs the FP32
  // matmul of ActMode::kFloat and must outlive the layer.
  QuantizedLinear(QuantizedWeights w, ActMode act, const backends::Backend& backend, const std::string& name = "");
  void forward(const float* x, int64_t m, float* y) const override;
  // "w4a8-per-channel", "w4a8-g128", "w8a8"; weight-only: "w4a16-per-channel", "w4a16-g128", "w8a16".
  std::string kind() const override;

  WeightFormat variant() const { return w_.variant; }
  ActMode act_mode() const { return act_; }
  const QuantizedWeights& weights() const { return w_; }
  // Raw-pointer view for ref_cpu::qgemm.
  ref_cpu::QGemmWeights gemm_weights() const;
  // The real-valued weights the integer path represents: F32 [N, K] (ref_cpu::dequantize_weights).
  Tensor dequantized_weight() const;

 private:
  QuantizedWeights w_;
  ActMode act_;
  const backends::Backend* backend_;
  Tensor deq_;       // F32 [N, K], only for ActMode::kFloat
  Tensor bias_f32_;  // F32 [N] view of the FP16 bias, only for ActMode::kFloat
};

// Per-token INT8 quantization of x [m, k] (formats.h quantize_act_row): q [m, k], FP16 scale and sum per row.
struct QuantizedActs {
  std::vector<int8_t> q;
  std::vector<uint16_t> scale, sum;
  ref_cpu::QGemmActs view(int64_t m) const { return {m, q.data(), scale.data(), sum.data()}; }
};
QuantizedActs quantize_acts(const float* x, int64_t m, int64_t k);

// FP16 weights (rounded once from the given FP32/FP16/BF16 weight, round to nearest even) with FP32 arithmetic:
// the lm_head of the quantized model.
class Fp16Linear final : public Linear {
 public:
  Fp16Linear(const Tensor& weight, const backends::Backend& backend);
  void forward(const float* x, int64_t m, float* y) const override;
  std::string kind() const override { return "fp16"; }
  const Tensor& weight() const { return w_; }  // F32 [out, in], every value exactly an FP16

 private:
  Tensor w_;
  const backends::Backend* backend_;
};

}  // namespace qs::model
