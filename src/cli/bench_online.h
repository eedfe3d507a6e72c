// `qserve bench --online`: the online serving benchmark (runtime/online_bench.h: Poisson or all-at-once arrivals,
// max concurrency, shared prefixes; vLLM's metrics) driving the serving Engine in process, on the GPU runner (random
// weights in a named shape, or a checkpoint) or on any executor the factory builds from a checkpoint.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "cli/executor_factory.h"
#include "runtime/online_bench.h"

namespace qs::cli {

struct OnlineBenchArgs {
  runtime::OnlineBenchOptions bench;
  std::string shape, config, model;  // exactly one (shape / config: random weights, GPU only)
  std::string dtype = "w4a8kv4";     // random weights: the GPU path
  std::string variant = "per-channel";
  ExecutorFlags exec;
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 8192;
  bool no_prefix_caching = false, static_batch = false;
  std::string json_out;
  uint64_t weight_seed = 1;
};

void run_online_bench_cmd(const OnlineBenchArgs& a);

}  // namespace qs::cli
