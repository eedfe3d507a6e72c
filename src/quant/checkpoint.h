// The writer of the qserve quantized checkpoint (QoQ W4A8KV4, and W8A8 for baselines). The format itself, its
// metadata and its reader live with the model (model/checkpoint/quantized_checkpoint.h), since serving reads it
// and only the quantizer writes it.
#pragma once

#include <string>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/checkpoint/quantized_checkpoint.h"
#include "quant/weight_quant.h"

namespace qs::quant {

class QuantizedCheckpointWriter {
 public:
  explicit QuantizedCheckpointWriter(model::CheckpointMeta meta);
  // The linear's format must match the checkpoint's variant; bias (optional) is F32 or F16 [N].
  void add_linear(const std::string& name, const W4PerChannelWeight& w, const Tensor& bias = Tensor());
  void add_linear(const std::string& name, const W4G128Weight& w, const Tensor& bias = Tensor());
  void add_linear(const std::string& name, const Int8ChannelWeight& w, const Tensor& bias = Tensor());
  // An FP tensor (F32, F16 or BF16), stored as F16. Throws if a value overflows FP16.
  void add_fp16(const std::string& name, const Tensor& t);
  // Creates `dir` if needed and writes dir/model.safetensors, then dir/config.json. Clear errors for an
  // unwritable or invalid directory.
  void write(const std::string& dir) const;
  const model::CheckpointMeta& meta() const { return meta_; }

 private:
  void add_bias(const std::string& name, const Tensor& bias, int64_t n);
  void begin_linear(const std::string& name, WeightFormat v, int64_t n, int64_t k);
  model::CheckpointMeta meta_;
  io::SafetensorsWriter writer_;
};

// A stored linear's weights as the quantizer's dequantized reference (F32 [N, K], quant/weight_quant.h).
Tensor dequantize(const model::StoredLinear& l);

}  // namespace qs::quant
