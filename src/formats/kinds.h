// The one spelling of the engine's storage kinds, shared by kernels, backends, model, executors and the CLI:
// the quantized weight format of a linear and the KV-cache element type. A leaf: plain C++, no dependencies.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/error.h"

namespace qs {

// A quantized linear's weight format (formats.h has the bit-level layouts; the checkpoint stores the name).
enum class WeightFormat : int32_t {
  kW4A8PerChannel = 0,  // UINT4 per output channel, FP16 scale + scaled zero; INT8 per-token activations
  kW4A8G128 = 1,        // progressive: INT8 per channel (protective range), then UINT4 groups of 128
  kW8A8 = 2,            // INT8 per output channel (baseline)
};

// "per-channel", "g128", "w8a8" (the checkpoint metadata and CLI names)
inline const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kW4A8PerChannel: return "per-channel";
    case WeightFormat::kW4A8G128: return "g128";
    case WeightFormat::kW8A8: return "w8a8";
  }
  return "?";
}
// The format with that name; throws qs::Error naming the unknown name otherwise.
inline WeightFormat parse_weight_format(std::string_view name) {
  for (WeightFormat f : {WeightFormat::kW4A8PerChannel, WeightFormat::kW4A8G128, WeightFormat::kW8A8})
    if (name == weight_format_name(f)) return f;
  QS_FAIL() << "unknown weight variant '" << name << "' (expected per-channel, g128 or w8a8)";
  return WeightFormat::kW4A8G128;
}
inline bool is_w4(WeightFormat f) { return f != WeightFormat::kW8A8; }

enum class KvDType : int32_t {
  kKv4 = 0,   // UINT4 asymmetric per token per KV head, FP16 scale and zero (formats.h quantize_kv4_group)
  kFp16 = 1,  // FP16
  kFp8 = 2,   // FP8 e4m3 (the FP8 baseline engine path)
  kFp32 = 3,  // host-only: the reference executor running an FP32 model
};

// "kv4", "fp16", "fp8", "fp32"
inline const char* kv_dtype_name(KvDType d) {
  switch (d) {
    case KvDType::kKv4: return "kv4";
    case KvDType::kFp16: return "fp16";
    case KvDType::kFp8: return "fp8";
    case KvDType::kFp32: return "fp32";
  }
  return "?";
}

}  // namespace qs
