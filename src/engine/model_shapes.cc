// Embedded config.json texts of the built-in model shapes (model_shapes.h). Copied verbatim from the public
// Hugging Face configs (../shared/data/configs); model_shapes_test.cc checks they are equal.
#include "engine/model_shapes.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"

namespace qs::engine {
namespace {

const std::vector<std::pair<std::string, std::string>>& table() {
  static const std::vector<std::pair<std::string, std::string>> t = {
      {"llama-3-8b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "num_hidden_layers": 32,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "vocab_size": 128256,
  "rope_theta": 500000.0,
  "max_position_embeddings": 8192,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 128000,
  "eos_token_id": 128001
})qsjson"},
      {"llama-3.1-8b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "num_hidden_layers": 32,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "vocab_size": 128256,
  "rope_theta": 500000.0,
  "max_position_embeddings": 131072,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 128000,
  "eos_token_id": [
    128001,
    128008,
    128009
  ],
  "rope_scaling": {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192
  }
})qsjson"},
      {"llama-2-7b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 4096,
  "intermediate_size": 11008,
  "num_hidden_layers": 32,
  "num_attention_heads": 32,
  "num_key_value_heads": 32,
  "vocab_size": 32000,
  "rope_theta": 10000.0,
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2
})qsjson"},
      {"llama-2-13b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 5120,
  "intermediate_size": 13824,
  "num_hidden_layers": 40,
  "num_attention_heads": 40,
  "num_key_value_heads": 40,
  "vocab_size": 32000,
  "rope_theta": 10000.0,
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2
})qsjson"},
      {"llama-2-70b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 8192,
  "intermediate_size": 28672,
  "num_hidden_layers": 80,
  "num_attention_heads": 64,
  "num_key_value_heads": 8,
  "vocab_size": 32000,
  "rope_theta": 10000.0,
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2
})qsjson"},
      {"mistral-7b", R"qsjson({
  "architectures": [
    "MistralForCausalLM"
  ],
  "model_type": "mistral",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "num_hidden_layers": 32,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "vocab_size": 32000,
  "rope_theta": 10000.0,
  "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2,
  "sliding_window": 4096
})qsjson"},
      {"yi-34b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 7168,
  "intermediate_size": 20480,
  "num_hidden_layers": 60,
  "num_attention_heads": 56,
  "num_key_value_heads": 8,
  "vocab_size": 64000,
  "rope_theta": 5000000.0,
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-05,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2
})qsjson"},
      {"qwen1.5-72b", R"qsjson({
  "architectures": [
    "Qwen2ForCausalLM"
  ],
  "model_type": "qwen2",
  "hidden_size": 8192,
  "intermediate_size": 24576,
  "num_hidden_layers": 80,
  "num_attention_heads": 64,
  "num_key_value_heads": 64,
  "vocab_size": 152064,
  "rope_theta": 1000000.0,
  "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-06,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 151643,
  "eos_token_id": 151643
})qsjson"},
      {"qwen2-7b", R"qsjson({
  "architectures": [
    "Qwen2ForCausalLM"
  ],
  "model_type": "qwen2",
  "hidden_size": 3584,
  "intermediate_size": 18944,
  "num_hidden_layers": 28,
  "num_attention_heads": 28,
  "num_key_value_heads": 4,
  "vocab_size": 152064,
  "rope_theta": 1000000.0,
  "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-06,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 151643,
  "eos_token_id": 151643
})qsjson"},
      {"llama-30b", R"qsjson({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "model_type": "llama",
  "hidden_size": 6656,
  "intermediate_size": 17920,
  "num_hidden_layers": 60,
  "num_attention_heads": 52,
  "num_key_value_heads": 52,
  "vocab_size": 32000,
  "rope_theta": 10000.0,
  "max_position_embeddings": 2048,
  "rms_norm_eps": 1e-06,
  "hidden_act": "silu",
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2
})qsjson"},
  };
  return t;
}

}  // namespace

const std::vector<std::string>& builtin_shape_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& [n, _] : table()) v.push_back(n);
    return v;
  }();
  return names;
}

const std::string& builtin_shape_json(const std::string& name) {
  for (const auto& [n, text] : table())
    if (n == name) return text;
  std::string known;
  for (const auto& [n, _] : table()) known += (known.empty() ? "" : ", ") + n;
  QS_FAIL() << "unknown model shape '" << name << "' (known: " << known << ")";
  return table().front().second;  // unreachable
}

io::ModelConfig builtin_shape(const std::string& name) {
  return io::parse_model_config(nlohmann::json::parse(builtin_shape_json(name)));
}

}  // namespace qs::engine
