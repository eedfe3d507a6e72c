// Random-weight Hugging Face checkpoints in a real model shape (`qserve make-random`): for timing quantization at
// scale and for engine benchmarks, where the function does not matter but the shapes, dtypes and file layout do.
// Writes config.json (the given HF config), safetensors shards of at most `max_shard_bytes` each and
// model.safetensors.index.json. Streaming: each shard's header is computed from the shapes alone, then every tensor
// is generated and written in chunks of a few MB, so memory stays bounded whatever the model size.
//
// Values: linear weights (and q/k/v biases when the config has them) and embeddings are approximately N(0, stddev)
// (sum of four uniforms, Irwin-Hall, rescaled to the variance: cheap and bounded at 3.46 sigma), norm weights 1.
// Deterministic: the value of element i of tensor t depends only on (seed, t, i / chunk), never on thread count.
// Layout and names follow the Llama family (model.embed_tokens, model.layers.N.{input_layernorm, self_attn.*,
// post_attention_layernorm, mlp.*}, model.norm, lm_head unless tied); the architecture must be one of
// io::parse_model_config's.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qs::io {

struct RandomCheckpointOptions {
  nlohmann::json config;  // the HF config.json to write (its architecture and shape)
  std::string out;        // output directory (created; must not exist or be empty)
  uint64_t seed = 0;
  DType dtype = DType::BF16;  // BF16, F16 or F32
  double stddev = 0.02;
  int64_t max_shard_bytes = 5'000'000'000LL;  // per shard, header excluded
};

struct RandomTensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool ones = false;  // a norm weight
  int64_t numel() const;
};

// The tensors of a Llama-family checkpoint with this config, in file order.
std::vector<RandomTensorSpec> llama_family_tensors(const nlohmann::json& config);

struct RandomCheckpointStats {
  int64_t parameters = 0;
  int64_t bytes = 0;  // tensor data, all shards
  int shards = 0;
};

// Writes the checkpoint. Throws qs::Error for an unsupported config, an unusable output directory or a failed write
// (the shard being written is removed).
RandomCheckpointStats write_random_checkpoint(const RandomCheckpointOptions& opt);

}  // namespace qs::io
