// The bridge between qs::model::Model and the QoQ transformations: a ModelWeights view (transforms.h) whose
// pointers reach the model's own F32 tensors (norms, embeddings and the weights inside each FpLinear), so that
// transformations edit the loaded model in place. Every linear must still be an FpLinear (transform before
// quantizing).
#pragma once

#include "model/model.h"
#include "quant/qoq/transforms.h"

namespace qs::quant::qoq {

ModelWeights weights_view(model::Model& m);
// The FpLinear behind a model linear slot (throws if it was already replaced by a quantized one).
model::FpLinear& fp_linear(model::Model& m, const std::string& name);

}  // namespace qs::quant::qoq
