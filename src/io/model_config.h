// Hugging Face config.json -> ModelConfig for the Llama family: LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM. Reads both the transformers-4 layout (rope_theta / rope_scaling at top level) and the
// transformers-5 one (rope_parameters). Unknown architectures and settings we cannot honour (an unknown rope
// scaling type, say) throw qs::Error naming the field.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qs::io {

struct RopeScaling {
  std::string type = "default";  // "default" (none), "linear", "llama3"
  double factor = 1.0;
  // llama3 only:
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2"
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // config's head_dim, else hidden_size / num_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections have a bias (Qwen2: always)
  int sliding_window = 0;       // 0: full attention
  std::vector<int> bos_token_ids;
  std::vector<int> eos_token_ids;
  std::string torch_dtype;      // "bfloat16", "float16", ... (informational)

  int gqa_ratio() const { return num_heads / num_kv_heads; }
  int q_size() const { return num_heads * head_dim; }
  int kv_size() const { return num_kv_heads * head_dim; }
};

ModelConfig parse_model_config(const nlohmann::json& j);
// `path` is a config.json file or a directory holding one.
ModelConfig load_model_config(const std::string& path);

// Inverse RoPE frequencies (head_dim / 2 values) with the config's scaling applied, in double precision.
std::vector<double> rope_inv_freq(const ModelConfig& c);

}  // namespace qs::io
