// FP32 linear layer (see linear.h).
#include "model/linear.h"

namespace qs::model {

FpLinear::FpLinear(Tensor weight, Tensor bias, const backends::Backend& backend)
    : Linear(weight.ndim() == 2 ? weight.dim(1) : 0, weight.ndim() == 2 ? weight.dim(0) : 0),
      weight_(std::move(weight)),
      bias_(std::move(bias)),
      backend_(&backend) {
  QS_CHECK(weight_.dtype() == DType::F32 && weight_.ndim() == 2) << "FpLinear needs an F32 [out, in] weight, got "
                                                                  << weight_.desc();
  QS_CHECK(!has_bias() || (bias_.dtype() == DType::F32 && bias_.numel() == out))
      << "FpLinear bias must be F32 [" << out << "], got " << bias_.desc();
}

void FpLinear::forward(const float* x, int64_t m, float* y) const {
  if (m == 0) return;
  backend_->linear(x, weight_.data<float>(), has_bias() ? bias_.data<float>() : nullptr, m, in, out, y);
}

}  // namespace qs::model
