// The engine's synchronous core (see engine_core.h).
#include "runtime/engine_core.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <numeric>

#include "core/error.h"
#include "core/logging.h"
#include "runtime/stop_text.h"
#include "tokenizer/incremental_decoder.h"

namespace qs::runtime {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "?";
}

namespace {

EngineMetrics::Histogram make_histogram(std::vector<double> bounds) {
  EngineMetrics::Histogram h;
  h.bounds = std::move(bounds);
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

void observe(EngineMetrics::Histogram& h, double v) {
  for (size_t i = 0; i < h.bounds.size(); ++i)
    if (v <= h.bounds[i]) ++h.counts[i];
  ++h.counts.back();
  h.sum += v;
  ++h.count;
}

double seconds(EngineCore::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

void compute_logprobs(const float* logits, int64_t vocab, int32_t token, int32_t k, TokenLogprob* sampled,
                      std::vector<TokenLogprob>* top) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  if (sampled) *sampled = {token, float(double(logits[token]) - lse)};
  if (top && k > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(vocab));
    std::iota(idx.begin(), idx.end(), 0);
    const size_t kk = std::min<size_t>(size_t(k), idx.size());
    std::partial_sort(idx.begin(), idx.begin() + std::ptrdiff_t(kk), idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    top->clear();
    for (size_t i = 0; i < kk; ++i) top->push_back({idx[i], float(double(logits[idx[i]]) - lse)});
  }
}

struct EngineCore::Request {
  uint64_t id = 0;
  RequestParams p;
  OutputCallback cb;
  std::unique_ptr<tokenizer::IncrementalDecoder> dec;
  StopText stop;
  int32_t max_tokens = 0;  // after the context cap
  bool host_sample = false;
  Clock::time_point arrival, last_token;
  bool got_first = false;
  int32_t completion = 0;
};

EngineCore::EngineCore(model::Executor& executor, std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                       EngineOptions opts)
    : exec_(executor),
      tok_(std::move(tokenizer)),
      opts_(opts),
      blocks_(executor.pool().page_size, executor.pool().num_pages, opts.enable_prefix_caching),
      sched_(blocks_, [&] {
        QS_CHECK(opts.max_num_seqs >= 1) << "engine: max_num_seqs must be >= 1, got " << opts.max_num_seqs;
        QS_CHECK(opts.max_num_batched_tokens >= 1)
            << "engine: max_num_batched_tokens must be >= 1, got " << opts.max_num_batched_tokens;
        SchedulerConfig c;
        c.max_num_batched_tokens = std::min(opts.max_num_batched_tokens, executor.max_batch_tokens());
        // Every running sequence's decode token must fit one step's budget, or the newest would starve.
        c.max_num_seqs = std::min({opts.max_num_seqs, executor.max_batch_seqs(), c.max_num_batched_tokens});
        c.static_batch = opts.static_batch;
        return c;
      }()) {
  vocab_ = exec_.config().vocab_size;
  max_context_ = exec_.max_context();
  QS_CHECK(vocab_ > 0 && max_context_ > 1) << "engine: executor reports vocab " << vocab_ << ", max context "
                                           << max_context_;
  if (tok_)
    for (int id : tok_->eos_ids()) eos_ids_.push_back(id);
  for (int id : exec_.config().eos_token_ids) eos_ids_.push_back(id);
  m_.ttft = make_histogram({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                            10.0, 20.0, 40.0, 80.0, 160.0, 640.0});
  m_.itl = make_histogram({0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                           0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0});
  m_.e2e = make_histogram({0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0});
}

EngineCore::~EngineCore() = default;

void EngineCore::validate(const RequestParams& p) const {
  auto bad = [](const std::string& m) { throw InvalidRequest(m); };
  if (p.prompt.empty()) bad("the prompt is empty (at least one token is needed)");
  if (int64_t(p.prompt.size()) + 1 > max_context_)
    bad("the prompt has " + std::to_string(p.prompt.size()) + " tokens; with one generated token that exceeds the "
        "model's context of " + std::to_string(max_context_) + " tokens");
  for (size_t i = 0; i < p.prompt.size(); ++i)
    if (p.prompt[i] < 0 || p.prompt[i] >= vocab_)
      bad("prompt token " + std::to_string(i) + " has id " + std::to_string(p.prompt[i]) +
          ", outside the vocabulary [0, " + std::to_string(vocab_) + ")");
  if (p.max_tokens < 1) bad("max_tokens must be >= 1, got " + std::to_string(p.max_tokens));
  if (p.logprobs < -1 || p.logprobs > 20) bad("logprobs must be in [0, 20] (or -1: none), got " +
                                              std::to_string(p.logprobs));
  try {
    model::validate(p.sampling);
  } catch (const Error& e) {
    bad(e.what());
  }
  for (const auto& s : p.stop)
    if (s.empty()) bad("a stop string is empty");
  if (!p.stop.empty() && !p.detokenize) bad("stop strings need detokenize = true");
  if ((p.detokenize || !p.stop.empty()) && !tok_) bad("this engine has no tokenizer: set detokenize = false");
  for (int32_t id : p.stop_token_ids)
    if (id < 0 || id >= vocab_) bad("stop token id " + std::to_string(id) + " is outside the vocabulary");
}

void EngineCore::add(uint64_t id, RequestParams params, OutputCallback on_output, Clock::time_point arrival) {
  validate(params);
  QS_CHECK(!reqs_.count(id)) << "engine: duplicate request id " << id;
  auto r = std::make_unique<Request>();
  r->id = id;
  r->cb = std::move(on_output);
  r->arrival = arrival;
  r->stop = StopText(params.stop);
  if (params.detokenize)
    r->dec = std::make_unique<tokenizer::IncrementalDecoder>(*tok_, /*skip_special_tokens=*/true,
                                                             params.continues_text);
  r->max_tokens = int32_t(std::min<int64_t>(params.max_tokens, max_context_ - int64_t(params.prompt.size())));
  r->host_sample = params.sampling.repetition_penalty != 1.0f;

  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  seq->tokens = params.prompt;
  seq->num_prompt = int32_t(params.prompt.size());
  seq->sampling = params.sampling;
  // The executor never sees a repetition penalty (a batch carries no history): such requests are sampled here,
  // on the returned logits, with the full parameters (r->p.sampling).
  seq->sampling.repetition_penalty = 1.0f;
  seq->return_logits = r->host_sample || params.logprobs >= 0;
  m_.prompt_tokens += seq->num_prompt;
  r->p = std::move(params);
  sched_.add(std::move(seq));
  reqs_.emplace(id, std::move(r));
}

void EngineCore::emit(Request& r, const RequestOutput& out) {
  if (!r.cb) return;
  try {
    r.cb(out);
  } catch (const std::exception& e) {
    QS_LOG(WARN) << "engine: the output callback of request " << r.id << " threw: " << e.what();
  }
}

void EngineCore::finish(Request& r, FinishReason reason, const std::string& error, RequestOutput out) {
  const uint64_t id = r.id;
  Sequence* seq = sched_.find(id);
  out.id = id;
  out.finish = reason;
  out.error = error;
  if (r.dec && reason != FinishReason::kError && !r.stop.stopped()) r.stop.add(r.dec->flush());
  out.text += r.stop.take(/*final=*/true);
  out.prompt_tokens = int32_t(r.p.prompt.size());
  out.completion_tokens = r.completion;
  out.cached_prompt_tokens = seq ? seq->cached_prompt_tokens : 0;
  sched_.finish(id);  // pages freed before the final event
  ++m_.requests_finished[int(reason)];
  if (reason != FinishReason::kAbort && reason != FinishReason::kError)
    observe(m_.e2e, seconds(Clock::now() - r.arrival));
  auto keep = std::move(reqs_.at(id));
  reqs_.erase(id);
  emit(*keep, out);
}

bool EngineCore::abort(uint64_t id) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return false;
  finish(*it->second, FinishReason::kAbort, "", {});
  return true;
}

void EngineCore::abort_all() {
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : reqs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) abort(id);
}

void EngineCore::fail_all(const std::string& error) {
  std::vector<uint64_t> ids;
  for (const auto& [id, r] : reqs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids)
    if (auto it = reqs_.find(id); it != reqs_.end()) finish(*it->second, FinishReason::kError, error, {});
}

void EngineCore::on_token(Request& r, Sequence& seq, int32_t token, const float* logits) {
  const auto now = Clock::now();
  if (!r.got_first) {
    observe(m_.ttft, seconds(now - r.arrival));
    r.got_first = true;
  } else {
    observe(m_.itl, seconds(now - r.last_token));
  }
  r.last_token = now;
  ++m_.generated_tokens;
  ++r.completion;

  RequestOutput out;
  out.id = r.id;
  out.tokens.push_back(token);
  if (r.p.logprobs >= 0 && logits) {
    TokenLogprob lp;
    std::vector<TokenLogprob> top;
    compute_logprobs(logits, vocab_, token, r.p.logprobs, &lp, &top);
    out.token_logprobs.push_back(lp);
    if (r.p.logprobs > 0) out.top_logprobs.push_back(std::move(top));
  }
  sched_.append_token(seq, token);

  FinishReason reason = FinishReason::kNone;
  const bool eos = !r.p.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
  const bool stop_id = std::find(r.p.stop_token_ids.begin(), r.p.stop_token_ids.end(), token) !=
                       r.p.stop_token_ids.end();
  if (eos || stop_id) {
    reason = FinishReason::kStop;  // the stop token's text is not emitted
  } else if (r.dec && r.stop.add(r.dec->push(token))) {
    reason = FinishReason::kStop;
  } else if (r.completion >= r.max_tokens || int64_t(seq.tokens.size()) >= max_context_) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) {
    finish(r, reason, "", std::move(out));
    return;
  }
  out.text = r.stop.take(false);
  out.prompt_tokens = seq.num_prompt;
  out.completion_tokens = r.completion;
  out.cached_prompt_tokens = seq.cached_prompt_tokens;
  emit(r, out);
}

bool EngineCore::step() {
  StepPlan plan = sched_.schedule();
  for (uint64_t id : plan.failed) {
    auto it = reqs_.find(id);
    if (it == reqs_.end()) continue;
    finish(*it->second, FinishReason::kError,
           "the KV cache (" + std::to_string(blocks_.num_pages()) + " pages of " +
               std::to_string(blocks_.page_size()) + " tokens) cannot hold this request's context",
           {});
  }
  if (plan.empty()) return !plan.failed.empty();

  model::ForwardResult res;
  try {
    res = exec_.execute(plan.batch);
  } catch (const std::exception& e) {
    if (plan.seqs.size() == 1) {
      if (auto it = reqs_.find(plan.seqs[0]->id); it != reqs_.end())
        finish(*it->second, FinishReason::kError, std::string("executor failed: ") + e.what(), {});
      return true;
    }
    // A rejected batch leaves the pool untouched (executor.h): rerun its sequences one by one so that only the
    // failing ones (e.g. non-finite logits) finish with the error and the others go on.
    std::vector<uint64_t> ids;
    for (Sequence* q : plan.seqs) ids.push_back(q->id);
    for (size_t i = 0; i < ids.size(); ++i) {
      Sequence* q = sched_.find(ids[i]);  // (a callback may have aborted it meanwhile)
      if (!q) continue;
      StepPlan one;
      const model::ForwardBatch& b = plan.batch;
      const int32_t s = int32_t(i);
      one.batch.add_sequence(b.token_ids.data() + b.cu_seqlens[i], b.q_len(s), b.prefix_len(s),
                             blocks_.pages_of(q->id), b.need_output[i] != 0, b.sampling[i], b.sample_step[i]);
      one.batch.return_logits = b.return_logits && b.need_output[i] && q->return_logits;
      one.seqs = {q};
      run_plan(one);
    }
    return true;
  }
  sched_.complete(plan);
  process(plan, res);
  return true;
}

void EngineCore::run_plan(const StepPlan& plan) {
  model::ForwardResult res;
  try {
    res = exec_.execute(plan.batch);
  } catch (const std::exception& e) {
    for (Sequence* s : plan.seqs)
      if (auto it = reqs_.find(s->id); it != reqs_.end())
        finish(*it->second, FinishReason::kError, std::string("executor failed: ") + e.what(), {});
    return;
  }
  sched_.complete(plan);
  process(plan, res);
}

void EngineCore::process(const StepPlan& plan, const model::ForwardResult& res) {
  // Results per output sequence (their logits rows are in order).
  const int32_t ns = plan.batch.num_seqs();
  std::vector<uint64_t> ids(static_cast<size_t>(ns));
  for (int32_t i = 0; i < ns; ++i) ids[size_t(i)] = plan.seqs[size_t(i)]->id;
  int64_t row = 0;
  for (int32_t i = 0; i < ns; ++i) {
    if (!plan.batch.need_output[size_t(i)]) continue;
    const int64_t this_row = row++;
    auto it = reqs_.find(ids[size_t(i)]);
    if (it == reqs_.end()) continue;  // finished by a callback's abort meanwhile
    Request& r = *it->second;
    Sequence* seq = sched_.find(r.id);
    const float* logits = nullptr;
    if (plan.batch.return_logits && res.logits.raw() != nullptr) {
      QS_CHECK(res.logits.ndim() == 2 && res.logits.shape()[1] == vocab_ &&
               this_row < res.logits.shape()[0])
          << "engine: the executor returned logits of shape " << shape_str(res.logits.shape());
      logits = res.logits.data<float>() + this_row * vocab_;
    }
    if (seq->return_logits && !logits) {
      finish(r, FinishReason::kError, "executor returned no logits for a request that needs them", {});
      continue;
    }
    if (logits) {
      bool finite = true;
      for (int64_t v = 0; v < vocab_ && finite; ++v) finite = std::isfinite(logits[v]);
      if (!finite) {
        finish(r, FinishReason::kError, "non-finite logits", {});
        continue;
      }
    }
    int32_t token = i < int32_t(res.tokens.size()) ? res.tokens[size_t(i)] : -1;
    if (r.host_sample) {
      model::Sampler sampler(r.p.sampling);
      token = sampler.sample_at(logits, vocab_, seq->tokens, uint64_t(seq->num_generated()));
    }
    if (token < 0 || token >= vocab_) {
      finish(r, FinishReason::kError, "executor sampled token " + std::to_string(token) + ", outside the vocabulary",
             {});
      continue;
    }
    on_token(r, *seq, token, logits);
  }
}

EngineMetrics EngineCore::metrics() const {
  EngineMetrics m = m_;
  m.waiting = sched_.num_waiting();
  m.running = sched_.num_running();
  m.pages_total = blocks_.num_pages();
  m.pages_used = blocks_.num_used();
  m.pages_cached = blocks_.num_evictable();
  m.pages_free = blocks_.num_free();
  m.prefix_query_tokens = sched_.stats().prefix_query_tokens;
  m.prefix_hit_tokens = sched_.stats().prefix_hit_tokens;
  m.preemptions = sched_.stats().preemptions;
  m.steps = sched_.stats().steps;
  return m;
}

void EngineCore::check_invariants() const {
  sched_.check_invariants();
  QS_CHECK(int64_t(reqs_.size()) == sched_.num_waiting() + sched_.num_running())
      << "invariant: " << reqs_.size() << " requests but the scheduler holds "
      << sched_.num_waiting() + sched_.num_running();
}

}  // namespace qs::runtime
