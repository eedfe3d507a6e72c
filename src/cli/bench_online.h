// `qserve bench --online`: the online serving benchmark (runtime/online_bench.h: Poisson or all-at-once arrivals,
// max concurrency, shared prefixes; vLLM's metrics), in one of two modes with the same workload, table and JSON:
//  * in process ("mode": "in-process"): drives the serving Engine directly, on the GPU runner (random weights in a
//    named shape, cli/random_executor.h, or a checkpoint) or on any executor the factory builds from a checkpoint;
//  * over HTTP ("mode": "http", --url http://HOST:PORT): each request is a streaming POST /v1/completions with a
//    token-id prompt to a running `qserve serve` (or any OpenAI-compatible server that accepts token-id prompts;
//    server/bench_http_client.h), one keep-alive connection per in-flight request. No executor is built: --shape,
//    --config or --model only names the vocabulary the prompts are drawn from (and --model's tokenizer skips its
//    special ids, as in process), so the same flags give the same requests in both modes.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "cli/executor_factory.h"
#include "cli/random_executor.h"
#include "runtime/online_bench.h"

namespace qs::cli {

struct OnlineBenchArgs {
  runtime::OnlineBenchOptions bench;
  RandomWeightsSpec random;  // --shape / --config (random weights, GPU only), variant, weight seed
  std::string model;         // or a checkpoint (exactly one of shape, config, model)
  ExecutorFlags exec;        // --dtype auto: w4a8kv4 for random weights
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 8192;
  bool no_prefix_caching = false, static_batch = false;
  std::string json_out;
  // HTTP mode.
  std::string url, api_key, served_model_name;
};

void run_online_bench_cmd(const OnlineBenchArgs& a);

}  // namespace qs::cli
