// Linear layers of the model as polymorphic objects: the forward pass only calls Linear::forward, so a quantized
// implementation (W4A8 per-channel / g128 integer GEMMs, W8A8, ...) plugs in by replacing a layer's
// std::unique_ptr<Linear> (see Model::linear_slot). FpLinear is the FP32 reference: y = x W^T (+ b) on a backend.
// Shapes: x [m, in], y [m, out], row-major; W [out, in] as in Hugging Face checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backends/backend.h"
#include "core/tensor.h"

namespace qs::model {

class Linear {
 public:
  Linear(int64_t in_features, int64_t out_features) : in(in_features), out(out_features) {}
  virtual ~Linear() = default;
  Linear(const Linear&) = delete;
  Linear& operator=(const Linear&) = delete;

  // y[m, out] = f(x[m, in]). Must not depend on which other rows share the call (batched == one by one).
  virtual void forward(const float* x, int64_t m, float* y) const = 0;
  // Short description for logs and `inspect`, e.g. "fp32" or "w4a8-g128".
  virtual std::string kind() const = 0;

  const int64_t in, out;
};

// FP32 weights (and optional bias) computed by a backend's linear op.
class FpLinear final : public Linear {
 public:
  // weight: F32 [out, in]; bias: undefined Tensor or F32 [out]. Tensors share storage (no copy).
  FpLinear(Tensor weight, Tensor bias, const backends::Backend& backend);
  void forward(const float* x, int64_t m, float* y) const override;
  std::string kind() const override { return has_bias() ? "fp32+bias" : "fp32"; }

  const Tensor& weight() const { return weight_; }
  bool has_bias() const { return bias_.raw() != nullptr; }
  const Tensor& bias() const { return bias_; }  // undefined (default Tensor) when there is none
  // Mutable access for offline transformations (rotation, smoothing) that rewrite weights in place.
  Tensor& mutable_weight() { return weight_; }
  Tensor& mutable_bias() { return bias_; }

 private:
  Tensor weight_, bias_;
  const backends::Backend* backend_;
};

}  // namespace qs::model
