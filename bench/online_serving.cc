// Online serving benchmark of the runtime on the exact CPU reference executor (model/ref) with a real checkpoint
// (default: qs-llama-tiny), in one process, two comparisons from the serving issue measured in the same run:
//  1. continuous batching vs the static-batch baseline at the same max concurrency (all requests at once):
//     output token throughput ratio (the target on an H200: >= 90%);
//  2. a shared-prefix workload (every prompt = the same `prefix` tokens + `input` own tokens) with prefix caching
//     on vs off: mean TTFT ratio (target: >= 3x lower with caching).
// Each run prints vLLM's result table; one JSON line per run follows. The CPU reference is slow and exact: the
// numbers show the runtime's behaviour, not the engine's speed (that is the GPU runner's, same library).
// Usage: bench_online_serving [model_dir] [requests=32] [input=64] [output=16] [concurrency=8] [prefix=256]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/paths.h"
#include "model/model.h"
#include "model/ref/ref_executor.h"
#include "runtime/online_bench.h"
#include "tokenizer/tokenizer.h"

namespace {

qs::runtime::OnlineBenchResult run_one(qs::model::Model& model, const qs::runtime::EngineOptions& eo,
                                       const qs::runtime::OnlineBenchOptions& bo, const char* label) {
  qs::model::RefExecutorOptions xo;
  xo.kv_dtype = qs::KvDType::kFp32;
  xo.page_size = 16;
  const int64_t per_req = bo.shared_prefix_len + int64_t(bo.input_len) + bo.output_len;
  xo.num_pages = (per_req + 15) / 16 * std::max(eo.max_num_seqs, 1) + 64;
  qs::model::RefExecutor ex(model, xo);
  qs::runtime::Engine engine(ex, nullptr, eo);
  auto r = qs::runtime::run_online_bench(engine, bo, nullptr);
  std::printf("\n[%s]\n%s", label, qs::runtime::format_online_bench(r, bo).c_str());
  auto j = qs::runtime::online_bench_json(r, bo);
  j["run"] = label;
  std::printf("%s\n", j.dump().c_str());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : qs::data_dir() + "/models/qs-llama-tiny";
  const int n = argc > 2 ? std::atoi(argv[2]) : 32;
  const int input = argc > 3 ? std::atoi(argv[3]) : 64;
  const int output = argc > 4 ? std::atoi(argv[4]) : 16;
  const int conc = argc > 5 ? std::atoi(argv[5]) : 8;
  const int prefix = argc > 6 ? std::atoi(argv[6]) : 256;
  auto model = qs::model::Model::load(dir);

  qs::runtime::OnlineBenchOptions bo;
  bo.num_prompts = n;
  bo.input_len = input;
  bo.output_len = output;
  qs::runtime::EngineOptions eo;
  eo.max_num_seqs = conc;
  const auto cont = run_one(*model, eo, bo, "continuous batching");
  eo.static_batch = true;
  const auto stat = run_one(*model, eo, bo, "static batching");

  bo.shared_prefix_len = prefix;
  bo.max_concurrency = conc;
  eo.static_batch = false;
  eo.enable_prefix_caching = true;
  const auto on = run_one(*model, eo, bo, "shared prefix, prefix caching on");
  eo.enable_prefix_caching = false;
  const auto off = run_one(*model, eo, bo, "shared prefix, prefix caching off");

  std::printf("\ncontinuous / static output throughput: %.3f\nmean TTFT caching off / on: %.2fx\n",
              cont.output_throughput / stat.output_throughput, off.ttft.mean_ms / on.ttft.mean_ms);
  return 0;
}
