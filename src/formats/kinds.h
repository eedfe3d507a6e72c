// The one spelling of the engine's storage kinds, shared by kernels, backends, model, executors and the CLI:
// the KV-cache element type. (Weight formats: quant/weight_quant.h and the GEMM variants, to be unified here.)
// A leaf: plain C++, no dependencies.
#pragma once

#include <cstdint>

namespace qs {

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
