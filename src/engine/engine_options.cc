// Engine dtype names (engine_options.h).
#include "engine/engine_options.h"

#include "core/error.h"

namespace qs::engine {

const char* engine_dtype_name(EngineDType d) {
  switch (d) {
    case EngineDType::kW4A8KV4: return "w4a8kv4";
    case EngineDType::kFp16: return "fp16";
    case EngineDType::kFp8: return "fp8";
  }
  return "?";
}

EngineDType parse_engine_dtype(const std::string& s) {
  if (s == "w4a8kv4") return EngineDType::kW4A8KV4;
  if (s == "fp16") return EngineDType::kFp16;
  if (s == "fp8") return EngineDType::kFp8;
  QS_FAIL() << "unknown dtype '" << s << "' (expected w4a8kv4, fp8 or fp16)";
  return EngineDType::kFp16;
}

}  // namespace qs::engine
