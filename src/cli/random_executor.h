// Random weights in a built-in model shape (`--shape llama-3-8b`) or a config.json (`--config FILE`) on the GPU
// runner, for `qserve bench --online` and `qserve serve --shape`: the paper's benchmark setting without a 16 GB
// checkpoint. The executor flags (cli/executor_factory.h) apply as for a checkpoint: --dtype (auto = w4a8kv4),
// --kv fp (FP16 cache under W4A8), --gpu-memory-utilization, --kv-pages (a cap on the pool), --max-context (0: the
// shape's context, at most 16384). There is no tokenizer: the model's ids are not a tokenizer's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cli/executor_factory.h"
#include "io/model_config.h"
#include "model/executor.h"

namespace qs::cli {

struct RandomWeightsSpec {
  std::string shape, config;            // exactly one
  std::string variant = "per-channel";  // W4A8 weights: per-channel | g128
  uint64_t seed = 1;
};

// "llama-3-8b | llama-2-7b | ..." for help texts.
std::string builtin_shape_list();
// The model config of the spec (throws qs::Error naming the shape / file).
io::ModelConfig random_weights_config(const RandomWeightsSpec& s);
// The GPU runner over random weights; throws qs::Error on a build or machine without CUDA.
std::unique_ptr<model::Executor> make_random_weights_executor(const RandomWeightsSpec& s, const ExecutorFlags& f);

}  // namespace qs::cli
