// Host overhead of the serving runtime (scheduler + block manager + engine core: planning the step, building the
// ForwardBatch, handling the sampled tokens and their events), measured with an executor that costs nothing, at
// the paper's serving shape: N requests of `input` prompt tokens and `output` generated tokens, 64-token pages,
// max 256 running sequences, 8192-token budget. What a GPU step must be compared with: the runtime adds this much
// host time per step (a Llama-3-8B decode step at batch 256 on an H200 is tens of milliseconds). Continuous
// batching and static batching are both run; prefix caching on, detokenization off (benchmark requests).
// Usage: bench_runtime_overhead [requests=1024] [input=1024] [output=128]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>

#include "runtime/engine_core.h"

namespace {

class NullExecutor : public qs::model::Executor {
 public:
  NullExecutor(int64_t pages) {
    cfg_.vocab_size = 128256;
    cfg_.max_position_embeddings = 8192;
    pool_.page_size = 64;
    pool_.num_pages = pages;
  }
  std::string name() const override { return "null"; }
  const qs::io::ModelConfig& config() const override { return cfg_; }
  qs::model::KvPoolInfo pool() const override { return pool_; }
  int64_t max_context() const override { return 8192; }
  int32_t max_batch_tokens() const override { return 8192; }
  int32_t max_batch_seqs() const override { return 256; }
  qs::model::ForwardResult execute(const qs::model::ForwardBatch& b) override {
    qs::model::ForwardResult r;
    r.tokens.assign(size_t(b.num_seqs()), -1);
    for (int32_t s = 0; s < b.num_seqs(); ++s)
      if (b.need_output[size_t(s)]) r.tokens[size_t(s)] = int32_t((b.context_lens[size_t(s)] * 7919) % 128000);
    return r;
  }

 private:
  qs::io::ModelConfig cfg_;
  qs::model::KvPoolInfo pool_;
};

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024;
  const int input = argc > 2 ? std::atoi(argv[2]) : 1024;
  const int output = argc > 3 ? std::atoi(argv[3]) : 128;
  nlohmann::json out = nlohmann::json::array();
  std::printf("| mode | requests | steps | decode steps | host time (s) | us / step | us / decode step |\n"
              "|---|---|---|---|---|---|---|\n");
  for (bool static_batch : {false, true}) {
    // Enough pages for 256 running requests (the 8B-on-H200 regime is compute-bound, not page-bound).
    NullExecutor ex(int64_t(256) * ((input + output + 63) / 64 + 1));
    qs::runtime::EngineOptions o;
    o.static_batch = static_batch;
    qs::runtime::EngineCore core(ex, nullptr, o);
    std::mt19937_64 rng(1);
    int64_t tokens = 0;
    for (int i = 0; i < n; ++i) {
      qs::runtime::RequestParams p;
      p.prompt.resize(size_t(input));
      for (auto& t : p.prompt) t = int32_t(rng() % 128000);
      p.max_tokens = output;
      p.ignore_eos = true;
      p.detokenize = false;
      core.add(uint64_t(i + 1), std::move(p), [&tokens](const qs::runtime::RequestOutput& r) {
        tokens += int64_t(r.tokens.size());
      });
    }
    int64_t steps = 0, decode_steps = 0;
    double decode_s = 0;
    const auto t0 = std::chrono::steady_clock::now();
    while (core.has_work()) {
      const auto s0 = std::chrono::steady_clock::now();
      const int64_t gen0 = tokens;
      core.step();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
      ++steps;
      if (tokens - gen0 >= 200 && core.metrics().running >= 200) {
        ++decode_steps;
        decode_s += dt;
      }
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const char* mode = static_batch ? "static" : "continuous";
    std::printf("| %s | %d | %lld | %lld | %.3f | %.1f | %.1f |\n", mode, n, (long long)steps,
                (long long)decode_steps, total, 1e6 * total / double(steps),
                decode_steps ? 1e6 * decode_s / double(decode_steps) : 0.0);
    out.push_back({{"mode", mode}, {"requests", n}, {"input", input}, {"output", output}, {"steps", steps},
                   {"generated", tokens}, {"host_s", total}, {"us_per_step", 1e6 * total / double(steps)},
                   {"us_per_decode_step", decode_steps ? 1e6 * decode_s / double(decode_steps) : 0.0}});
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
