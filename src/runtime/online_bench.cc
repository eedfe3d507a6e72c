// The online serving benchmark (see online_bench.h).
#include "runtime/online_bench.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qs::runtime {

namespace {

using Clock = std::chrono::steady_clock;

int32_t sample_len(int32_t len, double ratio, std::mt19937_64& rng) {
  if (ratio <= 0) return len;
  const int32_t lo = std::max<int32_t>(1, int32_t(std::floor(len * (1.0 - ratio))));
  const int32_t hi = std::max<int32_t>(lo, int32_t(std::ceil(len * (1.0 + ratio))));
  return lo + int32_t(rng() % uint64_t(hi - lo + 1));
}

LatencyStats stats_ms(const std::vector<double>& s) {
  LatencyStats l;
  if (s.empty()) return l;
  double sum = 0;
  for (double v : s) sum += v;
  l.mean_ms = 1e3 * sum / double(s.size());
  l.median_ms = 1e3 * percentile(s, 50);
  l.p99_ms = 1e3 * percentile(s, 99);
  return l;
}

}  // namespace

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

std::vector<double> make_arrivals(int32_t n, double request_rate, uint64_t seed) {
  QS_CHECK(request_rate > 0) << "bench: request rate must be > 0 (inf: all at once), got " << request_rate;
  std::vector<double> t(static_cast<size_t>(std::max(n, 0)), 0.0);
  if (std::isinf(request_rate)) return t;
  std::mt19937_64 rng(seed ^ 0x5eed0a221a1ull);
  std::exponential_distribution<double> gap(request_rate);
  double now = 0;
  for (auto& x : t) {
    x = now;  // the first request goes at t = 0, like vLLM's
    now += gap(rng);
  }
  return t;
}

std::vector<BenchRequest> make_bench_requests(const OnlineBenchOptions& o, int64_t vocab,
                                              const tokenizer::Tokenizer* tok) {
  QS_CHECK(o.num_prompts >= 1) << "bench: num_prompts must be >= 1, got " << o.num_prompts;
  QS_CHECK(o.output_len >= 1) << "bench: output_len must be >= 1, got " << o.output_len;
  QS_CHECK(o.range_ratio >= 0 && o.range_ratio < 1) << "bench: range ratio must be in [0, 1), got " << o.range_ratio;
  QS_CHECK(o.shared_prefix_len >= 0) << "bench: shared_prefix_len must be >= 0";
  QS_CHECK(vocab >= 1) << "bench: empty vocabulary";
  std::mt19937_64 rng(o.seed);
  std::vector<int32_t> ids;  // the ids random prompts draw from
  for (int64_t i = 0; i < vocab; ++i)
    if (!tok || i >= tok->vocab_size() || !tok->is_special(int(i))) ids.push_back(int32_t(i));
  QS_CHECK(!ids.empty()) << "bench: no non-special token ids to draw prompts from";
  auto draw = [&](int32_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = ids[rng() % ids.size()];
    return v;
  };
  const std::vector<int32_t> prefix = draw(o.shared_prefix_len);

  std::vector<std::vector<int32_t>> file_prompts;
  if (!o.prompt_file.empty()) {
    QS_CHECK(tok) << "bench: a prompt file needs the model's tokenizer";
    std::ifstream f(o.prompt_file);
    QS_CHECK(f) << "bench: cannot read the prompt file " << o.prompt_file;
    std::string line;
    while (std::getline(f, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto e = tok->encode(line, true);
      file_prompts.emplace_back(e.begin(), e.end());
    }
    QS_CHECK(!file_prompts.empty()) << "bench: the prompt file " << o.prompt_file << " has no prompts";
  }

  std::vector<BenchRequest> out;
  for (int32_t i = 0; i < o.num_prompts; ++i) {
    BenchRequest r;
    r.prompt = prefix;
    if (file_prompts.empty()) {
      QS_CHECK(o.input_len >= 1 || o.shared_prefix_len >= 1) << "bench: input_len must be >= 1";
      const auto own = draw(sample_len(o.input_len, o.range_ratio, rng));
      r.prompt.insert(r.prompt.end(), own.begin(), own.end());
    } else {
      const auto& fp = file_prompts[size_t(i) % file_prompts.size()];
      r.prompt.insert(r.prompt.end(), fp.begin(), fp.end());
    }
    r.output_len = sample_len(o.output_len, o.range_ratio, rng);
    out.push_back(std::move(r));
  }
  return out;
}

OnlineBenchResult run_online_bench(const SubmitFn& submit, const std::vector<BenchRequest>& reqs,
                                   const OnlineBenchOptions& o) {
  QS_CHECK(!reqs.empty()) << "bench: no requests";
  QS_CHECK(o.max_concurrency >= 0) << "bench: max_concurrency must be >= 0, got " << o.max_concurrency;
  const auto arrivals = make_arrivals(int32_t(reqs.size()), o.request_rate, o.seed);
  OnlineBenchResult res;
  res.records.resize(reqs.size());
  std::vector<double> last_event(reqs.size(), 0.0);
  std::mutex mu;
  std::condition_variable cv;
  int32_t in_flight = 0;
  size_t ended = 0;
  const auto t0 = Clock::now();
  auto now_s = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  auto end_one = [&] {
    std::lock_guard<std::mutex> lk(mu);
    --in_flight;
    ++ended;
    cv.notify_all();
  };

  for (size_t i = 0; i < reqs.size(); ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(arrivals[i])));
    {
      std::unique_lock<std::mutex> lk(mu);
      if (o.max_concurrency > 0) cv.wait(lk, [&] { return in_flight < o.max_concurrency; });
      ++in_flight;
      res.max_in_flight = std::max(res.max_in_flight, in_flight);
    }
    OnlineBenchRecord& rec = res.records[i];
    rec.prompt_len = int32_t(reqs[i].prompt.size());
    rec.send_s = now_s();
    RequestParams p;
    p.prompt = reqs[i].prompt;
    p.max_tokens = reqs[i].output_len;
    p.ignore_eos = o.ignore_eos;
    p.detokenize = false;
    p.sampling = o.sampling;
    // Each record is written only by its request's callbacks (one at a time), and read after `ended` says so.
    OutputCallback cb = [&, i](const RequestOutput& out) {
      const double t = now_s();
      OnlineBenchRecord& r = res.records[i];
      if (!out.tokens.empty()) {
        if (r.output_len == 0) {
          r.first_token_s = t;
        } else {
          r.itl_s.push_back(t - last_event[i]);
        }
        last_event[i] = t;
        r.output_len += int32_t(out.tokens.size());
      }
      if (out.finish != FinishReason::kNone) {
        // The final event's total is exact (over HTTP: the usage chunk's count; a chunk may carry several tokens).
        if (out.completion_tokens > r.output_len) {
          if (r.output_len == 0) r.first_token_s = t;
          r.output_len = out.completion_tokens;
        }
        r.end_s = t;
        r.ok = (out.finish == FinishReason::kLength || out.finish == FinishReason::kStop) && r.output_len > 0;
        if (!r.ok) r.error = std::string(finish_reason_name(out.finish)) + (out.error.empty() ? "" : ": " + out.error);
        end_one();
      }
    };
    try {
      submit(std::move(p), std::move(cb));
    } catch (const std::exception& e) {
      rec.ok = false;
      rec.error = e.what();
      rec.end_s = now_s();
      end_one();
    }
  }
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return ended == reqs.size(); });
  }

  std::vector<double> ttft, tpot, itl, e2el;
  double last_end = 0;
  for (const auto& r : res.records) {
    last_end = std::max(last_end, r.end_s);
    if (!r.ok) {
      ++res.failed;
      continue;
    }
    ++res.completed;
    res.total_input_tokens += r.prompt_len;
    res.total_output_tokens += r.output_len;
    ttft.push_back(r.first_token_s - r.send_s);
    e2el.push_back(r.end_s - r.send_s);
    if (r.output_len > 1) tpot.push_back((r.end_s - r.first_token_s) / double(r.output_len - 1));
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
  }
  res.duration_s = last_end;
  if (res.duration_s > 0) {
    res.request_throughput = res.completed / res.duration_s;
    res.output_throughput = double(res.total_output_tokens) / res.duration_s;
    res.total_token_throughput = double(res.total_input_tokens + res.total_output_tokens) / res.duration_s;
  }
  res.ttft = stats_ms(ttft);
  res.tpot = stats_ms(tpot);
  res.itl = stats_ms(itl);
  res.e2el = stats_ms(e2el);
  return res;
}

OnlineBenchResult run_online_bench(Engine& engine, const OnlineBenchOptions& o, const tokenizer::Tokenizer* tok) {
  const auto reqs = make_bench_requests(o, engine.executor().config().vocab_size, tok);
  const EngineMetrics before = engine.metrics();
  OnlineBenchResult r = run_online_bench(
      [&](RequestParams p, OutputCallback cb) { engine.submit(std::move(p), std::move(cb)); }, reqs, o);
  const EngineMetrics after = engine.metrics();
  r.prefix_hit_tokens = after.prefix_hit_tokens - before.prefix_hit_tokens;
  r.prefix_query_tokens = after.prefix_query_tokens - before.prefix_query_tokens;
  r.preemptions = after.preemptions - before.preemptions;
  return r;
}

nlohmann::json online_bench_json(const OnlineBenchResult& r, const OnlineBenchOptions& o) {
  nlohmann::json j;
  j["num_prompts"] = o.num_prompts;
  j["request_rate"] = std::isinf(o.request_rate) ? nlohmann::json("inf") : nlohmann::json(o.request_rate);
  j["max_concurrency"] = o.max_concurrency;
  j["input_len"] = o.input_len;
  j["output_len"] = o.output_len;
  j["range_ratio"] = o.range_ratio;
  j["shared_prefix_len"] = o.shared_prefix_len;
  j["seed"] = o.seed;
  if (!o.prompt_file.empty()) j["prompt_file"] = o.prompt_file;
  j["duration"] = r.duration_s;
  j["completed"] = r.completed;
  j["failed"] = r.failed;
  j["total_input_tokens"] = r.total_input_tokens;
  j["total_output_tokens"] = r.total_output_tokens;
  j["request_throughput"] = r.request_throughput;
  j["output_throughput"] = r.output_throughput;
  j["total_token_throughput"] = r.total_token_throughput;
  j["max_in_flight"] = r.max_in_flight;
  auto put = [&](const char* name, const LatencyStats& s) {
    j[fmt::format("mean_{}_ms", name)] = s.mean_ms;
    j[fmt::format("median_{}_ms", name)] = s.median_ms;
    j[fmt::format("p99_{}_ms", name)] = s.p99_ms;
  };
  put("ttft", r.ttft);
  put("tpot", r.tpot);
  put("itl", r.itl);
  put("e2el", r.e2el);
  if (r.prefix_query_tokens >= 0) {
    j["prefix_hit_tokens"] = r.prefix_hit_tokens;
    j["prefix_query_tokens"] = r.prefix_query_tokens;
    j["preemptions"] = r.preemptions;
  }
  return j;
}

std::string format_online_bench(const OnlineBenchResult& r, const OnlineBenchOptions& o) {
  std::string s;
  auto line = [&](const std::string& k, const std::string& v) { s += fmt::format("{:<40}{:>12}\n", k, v); };
  auto f2 = [](double v) { return fmt::format("{:.2f}", v); };
  s += fmt::format("{:=^52}\n", " Serving Benchmark Result ");
  line("Successful requests:", std::to_string(r.completed));
  if (r.failed) line("Failed requests:", std::to_string(r.failed));
  line("Request rate (req/s):", std::isinf(o.request_rate) ? "inf" : f2(o.request_rate));
  if (o.max_concurrency > 0) line("Maximum request concurrency:", std::to_string(o.max_concurrency));
  if (o.shared_prefix_len > 0) line("Shared prefix length (tokens):", std::to_string(o.shared_prefix_len));
  line("Benchmark duration (s):", f2(r.duration_s));
  line("Total input tokens:", std::to_string(r.total_input_tokens));
  line("Total generated tokens:", std::to_string(r.total_output_tokens));
  line("Request throughput (req/s):", f2(r.request_throughput));
  line("Output token throughput (tok/s):", f2(r.output_throughput));
  line("Total token throughput (tok/s):", f2(r.total_token_throughput));
  auto block = [&](const char* title, const char* name, const LatencyStats& l) {
    s += fmt::format("{:-^52}\n", std::string(" ") + title + " ");
    line(fmt::format("Mean {} (ms):", name), f2(l.mean_ms));
    line(fmt::format("Median {} (ms):", name), f2(l.median_ms));
    line(fmt::format("P99 {} (ms):", name), f2(l.p99_ms));
  };
  block("Time to First Token", "TTFT", r.ttft);
  block("Time per Output Token (excl. 1st token)", "TPOT", r.tpot);
  block("Inter-token Latency", "ITL", r.itl);
  block("End-to-end Latency", "E2EL", r.e2el);
  if (r.prefix_query_tokens >= 0) {
    s += fmt::format("{:-^52}\n", " Engine ");
    line("Prefix cache hit rate:",
         r.prefix_query_tokens > 0 ? fmt::format("{:.1f}%", 100.0 * double(r.prefix_hit_tokens) /
                                                                 double(r.prefix_query_tokens))
                                   : "-");
    line("Preemptions:", std::to_string(r.preemptions));
  }
  s += std::string(52, '=') + "\n";
  return s;
}

}  // namespace qs::runtime
