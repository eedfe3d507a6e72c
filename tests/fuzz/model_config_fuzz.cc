// Fuzz target: config.json parsing (parse_model_config, rope_inv_freq) on arbitrary bytes. Accepted configs must
// satisfy the invariants the model relies on (positive sizes, finite positive eps and theta, finite frequencies).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    const qs::io::ModelConfig c = qs::io::parse_model_config(j);
    if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0 ||
        c.vocab_size <= 0 || c.max_position_embeddings <= 0 || !(c.rms_norm_eps > 0) || !(c.rope_theta > 0) ||
        c.num_heads % c.num_kv_heads != 0)
      std::abort();
    for (double f : qs::io::rope_inv_freq(c))
      if (!std::isfinite(f)) std::abort();
  } catch (const qs::Error&) {
  }
  return 0;
}
