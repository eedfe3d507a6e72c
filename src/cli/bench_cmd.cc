// `qserve bench`: offline end-to-end throughput in the paper's setting (QSERVE.md section 3): static batches of
// --input-len prompt tokens and --output-len generated tokens, the largest batch that fits the KV pool (or --batch),
// throughput = generated tokens / wall time including prefill. Drives the GPU model runner (engine/cuda) directly:
// prefill in chunks of max_batch_tokens, then pure decode steps (CUDA graphs). One call compares several dtypes
// (--dtype w4a8kv4,fp8,fp16), each with its own executor, freed before the next; ratios to fp16 / fp8 come from the
// same call. --breakdown adds one eager decode step at the batch and one prefill chunk timed per kernel class with
// CUDA events. Progress on stderr; a table on stdout; --json FILE for the numbers.
//   qserve bench (--shape NAME | --config FILE | --model DIR) [--dtype w4a8kv4,fp16] [--input-len 1024]
//                [--output-len 512] [--batch N] [--max-batch N] [--variant per-channel|g128] [--breakdown]
//                [--json FILE]
// --online switches to the online serving benchmark (bench_online.h): requests arriving over time through the
// serving engine (continuous batching, prefix cache), vLLM's metrics; with --url http://HOST:PORT, the same requests
// through a running `qserve serve` (streaming completions, token-id prompts).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/bench_online.h"
#include "cli/command.h"
#include "cli/seed_option.h"
#include "core/error.h"
#include "engine/engine_options.h"
#include "engine/model_shapes.h"
#include "io/model_config.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "engine/cuda/cuda_executor.h"
#include "model/checkpoint/load.h"
#endif

namespace {

struct BenchArgs {
  std::string shape, config, model;
  std::string dtypes = "w4a8kv4,fp16";
  int input_len = 1024, output_len = 512;
  int batch = 0, max_batch = 1024, max_batch_tokens = 8192;
  std::string variant = "per-channel";
  bool no_graphs = false, breakdown = false, no_throughput = false;
  std::string json_out;
  uint64_t seed = 1;
  // --online (bench_online.h): the serving engine under a request load instead of static batches.
  bool online = false;
  qs::cli::OnlineBenchArgs on;
};

#if defined(QSERVE_HAVE_CUDA)
namespace eng = qs::engine;
using Clock = std::chrono::steady_clock;

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Result {
  std::string dtype, status = "ok", executor;
  int batch = 0;
  double prefill_s = 0, decode_s = 0, total_s = 0, out_tps = 0, total_tps = 0;
  int64_t kv_pages = 0, gen_tokens = 0;
  double peak_gib = 0, weights_gib = 0, kv_gib = 0;
  std::vector<std::pair<std::string, double>> bd_decode, bd_prefill;
  int bd_prefill_tokens = 0;
};

// Page ids of sequence slot i: [i * pps, (i + 1) * pps).
std::vector<int32_t> slot_pages(int i, int pps) {
  std::vector<int32_t> p(static_cast<size_t>(pps));
  for (int j = 0; j < pps; ++j) p[size_t(j)] = i * pps + j;
  return p;
}

double used_gib() {
  size_t fr = 0, tot = 0;
  cudaMemGetInfo(&fr, &tot);
  return double(tot - fr) / double(1ull << 30);
}

// Prefill every prompt, chunked into steps of at most max_batch_tokens tokens; returns each sequence's first
// sampled token.
std::vector<int32_t> prefill_all(eng::CudaExecutor& ex, const std::vector<std::vector<int32_t>>& prompts, int pps,
                                 bool progress) {
  const int B = int(prompts.size());
  const int M = ex.max_batch_tokens(), S = ex.max_batch_seqs();
  std::vector<int32_t> first(size_t(B), -1);
  int seq = 0, done_in_seq = 0;
  while (seq < B) {
    qs::model::ForwardBatch b;
    std::vector<int> ids;
    int tokens = 0;
    while (seq < B && tokens < M && b.num_seqs() < S) {
      const int len = int(prompts[size_t(seq)].size());
      const int n = std::min(len - done_in_seq, M - tokens);
      const bool last = done_in_seq + n == len;
      b.add_sequence(prompts[size_t(seq)].data() + done_in_seq, n, done_in_seq, slot_pages(seq, pps), last);
      ids.push_back(last ? seq : -1);
      tokens += n;
      done_in_seq += n;
      if (last) ++seq, done_in_seq = 0;
    }
    const auto r = ex.execute(b);
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] >= 0) first[size_t(ids[i])] = r.tokens[i];
    if (progress) std::fprintf(stderr, "\r  prefill %d/%d sequences   ", seq, B);
  }
  return first;
}

qs::model::ForwardBatch decode_batch(const std::vector<int32_t>& toks, int ctx_before, int pps) {
  qs::model::ForwardBatch b;
  for (size_t i = 0; i < toks.size(); ++i) b.add_sequence(&toks[i], 1, ctx_before, slot_pages(int(i), pps));
  return b;
}

Result run_one(const BenchArgs& a, const std::string& dt, const qs::io::ModelConfig& cfg) {
  Result res;
  res.dtype = dt;
  eng::CudaExecutorOptions o;
  o.dtype = eng::parse_engine_dtype(dt);
  o.gpu_memory_utilization = a.on.exec.gpu_memory_utilization;
  o.max_batch_tokens = a.max_batch_tokens;
  o.max_batch_seqs = a.batch > 0 ? a.batch : a.max_batch;
  o.max_context = a.input_len + a.output_len;
  o.cuda_graphs = !a.no_graphs;
  o.tune_gemms = a.on.exec.gemm_tuning;
  std::unique_ptr<qs::model::Model> host;  // --model: the loaded checkpoint (kept for a rebuild)
  if (!a.model.empty()) host = std::move(qs::model::load_checkpoint(a.model, {}).model);
  auto make = [&] {
    if (host) return std::make_unique<eng::CudaExecutor>(*host, o);
    eng::RandomWeightsOptions rw;
    rw.g128 = a.variant == "g128";
    rw.seed = a.seed;
    return std::make_unique<eng::CudaExecutor>(cfg, o, rw);
  };
  std::unique_ptr<eng::CudaExecutor> ex = make();
  res.executor = ex->name();
  const qs::model::KvPoolInfo pool = ex->pool();
  res.kv_pages = pool.num_pages;
  const int pps = (a.input_len + a.output_len + pool.page_size - 1) / pool.page_size;
  const int fit = int(std::min<int64_t>(pool.num_pages / pps, ex->max_batch_seqs()));
  if (a.batch > 0) {
    QS_CHECK(a.batch <= pool.num_pages / pps)
        << "bench: batch " << a.batch << " does not fit: " << pool.num_pages << " KV pages hold "
        << pool.num_pages / pps << " sequences of " << a.input_len + a.output_len << " tokens";
    res.batch = a.batch;
  } else {
    QS_CHECK(fit >= 1) << "bench: not even one sequence of " << a.input_len + a.output_len << " tokens fits ("
                       << pool.num_pages << " KV pages)";
    res.batch = fit;
  }
  if (a.batch == 0 && res.batch < ex->max_batch_seqs()) {
    // Rebuild with max_batch_seqs = the batch: its CUDA graph bucket is then exactly the batch (no padded rows), and
    // the smaller activations only leave more pages.
    ex.reset();
    o.max_batch_seqs = res.batch;
    ex = make();
    res.kv_pages = ex->pool().num_pages;
  }
  const int B = res.batch;
  const auto mem = ex->memory();
  res.weights_gib = double(mem.weight_bytes) / double(1ull << 30);
  res.kv_gib = double(mem.kv_pool_bytes) / double(1ull << 30);
  std::mt19937_64 rng(a.seed);
  std::vector<std::vector<int32_t>> prompts(size_t(B), std::vector<int32_t>(size_t(a.input_len)));
  for (auto& p : prompts)
    for (auto& t : p) t = int32_t(rng() % uint64_t(cfg.vocab_size));
  std::fprintf(stderr, "bench %s: %s, batch %d (%lld KV pages, %d per sequence)\n", dt.c_str(), res.executor.c_str(),
               B, (long long)pool.num_pages, pps);
  // Warm-up outside the timing: a short prefill (cuBLAS heuristics, kernel attributes) and one decode step at the
  // batch (captures its CUDA graph). Both write pages the timed run overwrites.
  {
    std::vector<std::vector<int32_t>> warm(size_t(std::min(B, 4)), std::vector<int32_t>(size_t(std::min(a.input_len, 64)), 1));
    prefill_all(*ex, warm, pps, false);
    std::vector<int32_t> toks(size_t(B), 1);
    qs::model::ForwardBatch d;
    for (int i = 0; i < B; ++i) d.add_sequence(&toks[size_t(i)], 1, 0, slot_pages(i, pps));
    ex->execute(d);
    ex->execute(d);
  }
  if (!a.no_throughput) {
    const auto t0 = Clock::now();
    std::vector<int32_t> toks = prefill_all(*ex, prompts, pps, true);
    const auto t1 = Clock::now();
    int64_t gen = B;  // the first token of each sequence comes from its prefill
    for (int step = 1; step < a.output_len; ++step) {
      const auto r = ex->execute(decode_batch(toks, a.input_len + step - 1, pps));
      toks = r.tokens;
      gen += B;
      if (step % 32 == 0 || step + 1 == a.output_len)
        std::fprintf(stderr, "\r  decode step %d/%d            ", step, a.output_len - 1);
    }
    const auto t2 = Clock::now();
    std::fprintf(stderr, "\n");
    res.prefill_s = secs(t0, t1);
    res.decode_s = secs(t1, t2);
    res.total_s = secs(t0, t2);
    res.gen_tokens = gen;
    res.out_tps = double(gen) / res.total_s;
    res.total_tps = double(int64_t(B) * (a.input_len + a.output_len)) / res.total_s;
  }
  res.peak_gib = used_gib();
  if (a.breakdown) {
    ex->set_profiling(true);
    std::vector<int32_t> toks(size_t(B), 7);
    const int ctx = a.input_len + a.output_len - 1;  // the last slot of every sequence
    ex->execute(decode_batch(toks, ctx, pps));       // one eager step first (warm)
    ex->execute(decode_batch(toks, ctx, pps));
    res.bd_decode = ex->last_profile();
    // One prefill chunk of max_batch_tokens tokens: whole prompts while they fit.
    qs::model::ForwardBatch pb;
    int tokens = 0;
    for (int i = 0; i < B && tokens < ex->max_batch_tokens() && pb.num_seqs() < ex->max_batch_seqs(); ++i) {
      const int n = std::min(a.input_len, ex->max_batch_tokens() - tokens);
      pb.add_sequence(prompts[size_t(i)].data(), n, 0, slot_pages(i, pps));
      tokens += n;
    }
    res.bd_prefill_tokens = tokens;
    ex->execute(pb);
    ex->execute(pb);
    res.bd_prefill = ex->last_profile();
    ex->set_profiling(false);
  }
  return res;
}

void print_breakdown(const char* title, const std::vector<std::pair<std::string, double>>& p) {
  if (p.empty()) return;
  double step = 0;
  for (const auto& [k, v] : p)
    if (k == "step") step = v;
  std::printf("  %s (eager, CUDA events):\n", title);
  double kernels = 0;
  for (const auto& [k, v] : p) {
    if (k == "kernels") kernels = v;
    if (k == "step" || k == "kernels") continue;
    std::printf("    %-14s %9.3f ms  %5.1f%%\n", k.c_str(), v, step > 0 ? 100.0 * v / step : 0.0);
  }
  std::printf("    %-14s %9.3f ms  %5.1f%%\n", "gaps", step - kernels, step > 0 ? 100.0 * (step - kernels) / step : 0.0);
  std::printf("    %-14s %9.3f ms\n", "step", step);
}

void run(const BenchArgs& a) {
  const int sources = int(!a.shape.empty()) + int(!a.config.empty()) + int(!a.model.empty());
  QS_CHECK(sources == 1) << "bench: give exactly one of --shape, --config, --model";
  qs::io::ModelConfig cfg;
  std::string what;
  if (!a.shape.empty()) {
    cfg = eng::builtin_shape(a.shape);
    what = a.shape + " (random weights)";
  } else if (!a.config.empty()) {
    cfg = qs::io::load_model_config(a.config);
    what = a.config + " (random weights)";
  } else {
    cfg = qs::io::load_model_config(a.model);
    what = a.model;
  }
  const auto dtypes = split_list(a.dtypes);
  QS_CHECK(!dtypes.empty()) << "bench: --dtype is empty";
  for (const auto& d : dtypes) eng::parse_engine_dtype(d);  // reject unknown names before any work
  int dev = 0;
  cudaDeviceProp prop{};
  QS_CHECK(cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
      << "bench: no CUDA GPU";
  std::vector<Result> results;
  for (const auto& d : dtypes) {
    try {
      results.push_back(run_one(a, d, cfg));
    } catch (const qs::Error& e) {
      Result r;
      r.dtype = d;
      r.status = e.what();
      std::fprintf(stderr, "bench %s: %s\n", d.c_str(), e.what());
      results.push_back(r);
    }
  }
  auto find = [&](const std::string& d) -> const Result* {
    for (const auto& r : results)
      if (r.dtype == d && r.status == "ok" && r.out_tps > 0) return &r;
    return nullptr;
  };
  const Result* fp16 = find("fp16");
  const Result* fp8 = find("fp8");
  std::printf("\nqserve bench: %s on %s, input %d, output %d tokens (throughput = generated tokens / wall time incl. "
              "prefill; warm-up and graph capture excluded)\n",
              what.c_str(), prop.name, a.input_len, a.output_len);
  std::printf("%-8s %6s %12s %12s %10s %10s %9s %9s %8s %8s %8s\n", "dtype", "batch", "out tok/s", "total tok/s",
              "prefill s", "decode s", "peak GiB", "KV pages", "vs fp16", "vs fp8", "");
  for (const auto& r : results) {
    if (r.status != "ok") {
      std::printf("%-8s  not run: %s\n", r.dtype.c_str(), r.status.c_str());
      continue;
    }
    char v16[16] = "-", v8[16] = "-";
    if (fp16 && r.out_tps > 0) std::snprintf(v16, sizeof v16, "%.2fx", r.out_tps / fp16->out_tps);
    if (fp8 && r.out_tps > 0) std::snprintf(v8, sizeof v8, "%.2fx", r.out_tps / fp8->out_tps);
    std::printf("%-8s %6d %12.0f %12.0f %10.2f %10.2f %9.1f %9lld %8s %8s\n", r.dtype.c_str(), r.batch, r.out_tps,
                r.total_tps, r.prefill_s, r.decode_s, r.peak_gib, (long long)r.kv_pages, v16, v8);
  }
  for (const auto& r : results) {
    if (r.bd_decode.empty()) continue;
    std::printf("\nbreakdown %s (%s):\n", r.dtype.c_str(), r.executor.c_str());
    print_breakdown(("decode step, batch " + std::to_string(r.batch)).c_str(), r.bd_decode);
    print_breakdown(("prefill, " + std::to_string(r.bd_prefill_tokens) + " tokens").c_str(), r.bd_prefill);
  }
  if (!a.json_out.empty()) {
    nlohmann::json j;
    j["gpu"] = prop.name;
    j["source"] = what;
    j["input_len"] = a.input_len;
    j["output_len"] = a.output_len;
    for (const auto& r : results) {
      nlohmann::json e;
      e["dtype"] = r.dtype;
      e["status"] = r.status;
      e["executor"] = r.executor;
      e["batch"] = r.batch;
      e["output_tokens_per_s"] = r.out_tps;
      e["total_tokens_per_s"] = r.total_tps;
      e["prefill_s"] = r.prefill_s;
      e["decode_s"] = r.decode_s;
      e["total_s"] = r.total_s;
      e["generated_tokens"] = r.gen_tokens;
      e["kv_pages"] = r.kv_pages;
      e["peak_gpu_gib"] = r.peak_gib;
      e["weights_gib"] = r.weights_gib;
      e["kv_pool_gib"] = r.kv_gib;
      if (fp16 && r.out_tps > 0) e["ratio_to_fp16"] = r.out_tps / fp16->out_tps;
      if (fp8 && r.out_tps > 0) e["ratio_to_fp8"] = r.out_tps / fp8->out_tps;
      for (const auto& [k, v] : r.bd_decode) e["breakdown_decode_ms"][k] = v;
      for (const auto& [k, v] : r.bd_prefill) e["breakdown_prefill_ms"][k] = v;
      j["results"].push_back(e);
    }
    std::ofstream f(a.json_out);
    QS_CHECK(f.good()) << "bench: cannot write " << a.json_out;
    f << j.dump(2) << "\n";
  }
}
#else
void run(const BenchArgs&) { QS_FAIL() << "qserve bench needs a build with CUDA (this one has none)"; }
#endif

qs::cli::CommandRegistrar reg("bench", "Offline throughput on the GPU (paper setting: 1024 in / 512 out, largest batch)",
                              [](CLI::App* sub) {
  auto a = std::make_shared<BenchArgs>();
  sub->add_option("--shape", a->shape, "built-in model shape with random weights: " + [] {
    std::string s;
    for (const auto& n : qs::engine::builtin_shape_names()) s += (s.empty() ? "" : " | ") + n;
    return s;
  }());
  sub->add_option("--config", a->config, "config.json of a model shape (random weights)");
  sub->add_option("--model", a->model, "checkpoint directory (HF FP -> fp16; QoQ quantized -> w4a8kv4)");
  // The executor factory's flags (one spelling across generate / ppl / bench / serve); --dtype stays bench's list
  // (registered below, after the factory's is left out).
  // Offline, only --gpu-memory-utilization applies; the others are for --online.
  qs::cli::add_executor_flags(sub, &a->on.exec, {"--dtype"});
  sub->add_option("--dtype", a->dtypes, "comma list of w4a8kv4, fp8, fp16 (each in turn, own executor)");
  sub->add_option("--input-len", a->input_len, "prompt tokens per sequence")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--output-len", a->output_len, "generated tokens per sequence")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--batch", a->batch, "sequences (0: the largest that fits, up to --max-batch)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-batch", a->max_batch, "cap on the automatic batch")->check(CLI::Range(1, 65535));
  sub->add_option("--max-batch-tokens", a->max_batch_tokens, "tokens per prefill step")->check(CLI::Range(1, 65535));
  sub->add_option("--variant", a->variant, "W4A8 weight variant for random weights")
      ->check(CLI::IsMember({"per-channel", "g128"}));
  sub->add_flag("--no-cuda-graphs", a->no_graphs, "decode steps without CUDA graphs");
  sub->add_flag("--breakdown", a->breakdown, "also time one decode step and one prefill per kernel class");
  sub->add_flag("--no-throughput", a->no_throughput, "skip the timed run (with --breakdown)");
  qs::cli::add_seed_option(sub, "--seed", &a->seed, "seed of the random weights and prompts, 0 .. 2^64-1");
  sub->add_option("--json", a->json_out, "write the results as JSON");
  // Online mode.
  auto& on = a->on;
  sub->add_flag("--online", a->online, "online serving benchmark through the engine (vllm bench serve conventions)");
  sub->add_option("--num-prompts", on.bench.num_prompts, "--online: requests")->check(CLI::Range(1, 1000000));
  sub->add_option("--request-rate", on.bench.request_rate, "--online: Poisson arrivals per second (default inf)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-concurrency", on.bench.max_concurrency, "--online: requests in flight at most (0: no cap)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--shared-prefix-len", on.bench.shared_prefix_len, "--online: tokens common to every prompt")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--range-ratio", on.bench.range_ratio, "--online: lengths uniform in len*(1 +- r)")
      ->check(CLI::Range(0.0, 0.99));
  sub->add_option("--prompt-file", on.bench.prompt_file, "--online: prompts, one per line (needs --model)");
  sub->add_option("--max-num-seqs", on.max_num_seqs, "--online: sequences running at once")->check(CLI::Range(1, 65535));
  sub->add_flag("--no-prefix-caching", on.no_prefix_caching, "--online: disable the prefix cache");
  sub->add_flag("--static-batch", on.static_batch, "--online: admit whole batches and run each to the end");
  sub->add_option("--url", on.url, "--online: benchmark a running server over HTTP (http://HOST:PORT) instead of "
                                    "the engine in process; --shape/--config/--model then only name the vocabulary");
  sub->add_option("--api-key", on.api_key, "--online --url: bearer token (or env QSERVE_API_KEY)");
  sub->add_option("--served-model-name", on.served_model_name,
                  "--online --url: the model name to send (default: the server's first model)");
  sub->callback([a] {
    if (!a->online) {
      const qs::cli::ExecutorFlags d;
      const auto& e = a->on.exec;
      QS_CHECK(e.device == d.device && e.kv == d.kv && e.kv_pages == d.kv_pages && e.max_context == d.max_context &&
               a->on.url.empty())
          << "bench: --device, --kv, --kv-pages, --max-context and --url apply to --online only";
      return run(*a);
    }
    qs::cli::OnlineBenchArgs o = a->on;
    o.random.shape = a->shape, o.random.config = a->config, o.model = a->model;
    o.random.variant = a->variant;
    o.random.seed = a->seed;
    o.exec.dtype = a->model.empty() ? a->dtypes.substr(0, a->dtypes.find(',')) : "auto";  // the list's first
    o.exec.cuda_graphs = !a->no_graphs;
    o.max_num_batched_tokens = a->max_batch_tokens;
    o.bench.input_len = a->input_len;
    o.bench.output_len = a->output_len;
    o.bench.seed = a->seed;
    o.json_out = a->json_out;
    qs::cli::run_online_bench_cmd(o);
  });
});

}  // namespace
