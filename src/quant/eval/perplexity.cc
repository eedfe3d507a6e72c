// Perplexity, KL divergence and top-1 agreement with the GPTQ windowing protocol (see perplexity.h).
#include "quant/eval/perplexity.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/window_scorer.h"

namespace qs::quant::eval {

namespace {

// log sum_v exp(x_v), in double, shifted by the maximum.
double log_sum_exp(const float* x, int64_t n) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - mx);
  return mx + std::log(s);
}

void check_finite(const float* x, int64_t n, const std::string& who, int64_t pos) {
  for (int64_t i = 0; i < n; ++i)
    QS_CHECK(std::isfinite(x[i])) << "evaluation: " << who << " produced a non-finite logit at position " << pos
                                  << ", token " << i;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

double token_nll(const float* logits, int64_t vocab, int64_t label) {
  QS_CHECK(label >= 0 && label < vocab) << "token_nll: label " << label << " outside the vocabulary of " << vocab;
  return log_sum_exp(logits, vocab) - double(logits[label]);
}

double kl_divergence(const float* ref_logits, const float* model_logits, int64_t vocab) {
  const double lr = log_sum_exp(ref_logits, vocab), lm = log_sum_exp(model_logits, vocab);
  double kl = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const double lp = double(ref_logits[v]) - lr;  // log p_ref
    const double lq = double(model_logits[v]) - lm;
    kl += std::exp(lp) * (lp - lq);
  }
  return kl;
}

int64_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v)
    if (logits[v] > logits[best]) best = v;
  return best;
}

std::vector<int32_t> tokenize_dataset(const tokenizer::Tokenizer& tok, const std::string& text) {
  const std::vector<int> ids = tok.encode(text, /*add_special_tokens=*/true);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

int64_t num_windows(int64_t n_tokens, int64_t seq_len, int64_t max_windows) {
  QS_CHECK(seq_len >= 2) << "evaluation: seq_len " << seq_len << " must be at least 2";
  QS_CHECK(max_windows >= 0) << "evaluation: max_windows " << max_windows << " must not be negative";
  int64_t n = n_tokens / seq_len;
  if (max_windows > 0) n = std::min(n, max_windows);
  return n;
}

namespace {

// The batch of one window: n tokens from an empty context in pages 0 .. ceil(n / page_size)-1, all_logits.
model::ForwardBatch window_batch(const model::Executor& ex, const int32_t* ids, int64_t n, bool quantized_self_kv) {
  const model::KvPoolInfo pool = ex.pool();
  const int64_t pages = (n + pool.page_size - 1) / pool.page_size;
  QS_CHECK(n >= 1 && n <= ex.max_batch_tokens() && pages <= pool.num_pages && n <= ex.max_context())
      << "evaluation: executor '" << ex.name() << "' cannot run a window of " << n << " tokens (" << pages
      << " pages of " << pool.page_size << "; it has " << pool.num_pages << " pages, max_batch_tokens "
      << ex.max_batch_tokens() << ", max_context " << ex.max_context() << ")";
  std::vector<int32_t> ids_v(ids, ids + n), page_ids(static_cast<size_t>(pages));
  for (int64_t p = 0; p < pages; ++p) page_ids[static_cast<size_t>(p)] = int32_t(p);
  model::ForwardBatch b;
  b.add_sequence(ids_v.data(), int32_t(n), 0, page_ids, /*output=*/false);
  b.all_logits = true;
  b.quantized_self_kv = quantized_self_kv;
  return b;
}

}  // namespace

Tensor window_logits(model::Executor& ex, const int32_t* ids, int64_t n, bool quantized_self_kv) {
  return ex.execute(window_batch(ex, ids, n, quantized_self_kv)).logits;
}

model::RefExecutorOptions window_executor_options(KvDType kv, int64_t seq_len) {
  QS_CHECK(seq_len >= 1 && seq_len <= (int64_t(1) << 24)) << "evaluation: seq_len " << seq_len << " out of range";
  model::RefExecutorOptions o;
  o.kv_dtype = kv;
  o.page_size = 64;
  o.num_pages = (seq_len + o.page_size - 1) / o.page_size;
  o.max_batch_tokens = int32_t(seq_len);
  o.max_batch_seqs = 1;
  return o;
}

std::vector<EvalResult> evaluate(const std::vector<int32_t>& tokens, const std::vector<EvalModel>& models,
                                 const EvalModel* reference, const EvalOptions& opt) {
  const int64_t L = opt.seq_len;
  const int64_t nw = num_windows(int64_t(tokens.size()), L, opt.max_windows);
  QS_CHECK(nw > 0) << "evaluation: the dataset has " << tokens.size() << " tokens, fewer than one window of "
                   << L;
  QS_CHECK(!models.empty() || reference) << "evaluation: no model to evaluate";
  std::vector<EvalModel> all = models;
  if (reference) all.push_back(*reference);
  int64_t vocab = 0;
  for (const auto& em : all) {
    QS_CHECK(em.executor) << "evaluation: model '" << em.label << "' has no executor";
    const int64_t v = em.executor->config().vocab_size;
    QS_CHECK(vocab == 0 || v == vocab) << "evaluation: model '" << em.label << "' has vocabulary " << v
                                       << ", others " << vocab;
    vocab = v;
  }
  for (int64_t i = 0; i < nw * L; ++i)
    QS_CHECK(tokens[size_t(i)] >= 0 && tokens[size_t(i)] < vocab)
        << "evaluation: token id " << tokens[size_t(i)] << " at " << i << " outside the vocabulary of " << vocab;

  std::vector<EvalResult> res(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    res[i].label = all[i].label;
    res[i].has_reference = reference && i + 1 < all.size();
  }
  const int64_t P = L - 1;  // predicting positions 0 .. L-2 of each window
  std::vector<double> nll(static_cast<size_t>(P)), kl(static_cast<size_t>(P));
  std::vector<int64_t> top(static_cast<size_t>(P));

  // Device scoring: when every executor can score its own logits (model::WindowScorer, the GPU runner), the
  // reference keeps its window's logits on the device and the models are scored against them there; only the
  // per-position scores reach the host, and they are summed in the same order as below.
  std::vector<model::WindowScorer*> scorers;
  bool device = opt.device_scores;
  for (const auto& em : all) {
    scorers.push_back(dynamic_cast<model::WindowScorer*>(em.executor));
    device = device && scorers.back() != nullptr;
  }
  if (device) {
    for (int64_t w = 0; w < nw; ++w) {
      const int32_t* ids = tokens.data() + w * L;
      const std::vector<int32_t> labels(ids + 1, ids + L);
      model::KeptLogits kept;
      auto score = [&](size_t mi, const model::KeptLogits* ref, bool keep) {
        const auto t0 = std::chrono::steady_clock::now();
        model::WindowScores sc;
        try {
          sc = scorers[mi]->score_window(window_batch(*all[mi].executor, ids, L, opt.quantized_self_kv), labels,
                                         ref, keep);
        } catch (const Error& e) {
          throw Error("evaluation: model '" + all[mi].label + "', window " + std::to_string(w) + ": " + e.what());
        }
        res[mi].seconds += seconds_since(t0);
        QS_CHECK(int64_t(sc.nll.size()) == P && (!ref || (int64_t(sc.kl.size()) == P && int64_t(sc.top1.size()) == P)))
            << "evaluation: model '" << all[mi].label << "' returned scores for " << sc.nll.size() << " of " << P
            << " positions";
        EvalResult& r = res[mi];
        for (int64_t p = 0; p < P; ++p) {  // sequential sums: deterministic
          r.nll_sum += sc.nll[size_t(p)];
          if (ref) {
            r.kl_sum += sc.kl[size_t(p)];
            r.top1_agree += sc.top1[size_t(p)];
          }
        }
        r.windows += 1;
        r.tokens += P;
      };
      if (reference) {
        score(all.size() - 1, nullptr, true);
        kept = scorers.back()->kept_logits();
      }
      for (size_t mi = 0; mi < models.size(); ++mi) score(mi, reference ? &kept : nullptr, false);
      if (opt.progress) opt.progress(w + 1, nw);
    }
  }
  for (int64_t w = 0; w < nw && !device; ++w) {
    const int32_t* ids = tokens.data() + w * L;
    auto run = [&](const EvalModel& em) {  // executor errors name the model and the window
      try {
        return window_logits(*em.executor, ids, L, opt.quantized_self_kv);
      } catch (const Error& e) {
        throw Error("evaluation: model '" + em.label + "', window " + std::to_string(w) + ": " + e.what());
      }
    };
    Tensor ref_logits;
    if (reference) {
      const auto t0 = std::chrono::steady_clock::now();
      ref_logits = run(*reference);
      res.back().seconds += seconds_since(t0);
    }
    for (size_t mi = 0; mi < all.size(); ++mi) {
      const bool is_ref = reference && mi + 1 == all.size();
      Tensor logits;
      if (is_ref) {
        logits = ref_logits;
      } else {
        const auto t0 = std::chrono::steady_clock::now();
        logits = run(all[mi]);
        res[mi].seconds += seconds_since(t0);
      }
      QS_CHECK(logits.shape() == Shape({L, vocab})) << "evaluation: logits of '" << all[mi].label << "' are "
                                                    << logits.desc();
      const float* lg = logits.data<float>();
      const float* rl = ref_logits.raw() ? ref_logits.data<float>() : nullptr;
      const bool cmp = res[mi].has_reference;
      parallel_for(P, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const float* row = lg + p * vocab;
          check_finite(row, vocab, all[mi].label, w * L + p);
          nll[size_t(p)] = token_nll(row, vocab, ids[p + 1]);
          if (cmp) {
            kl[size_t(p)] = kl_divergence(rl + p * vocab, row, vocab);
            top[size_t(p)] = argmax(rl + p * vocab, vocab) == argmax(row, vocab);
          }
        }
      }, 16);
      EvalResult& r = res[mi];
      for (int64_t p = 0; p < P; ++p) {  // sequential sums: deterministic
        r.nll_sum += nll[size_t(p)];
        if (cmp) {
          r.kl_sum += kl[size_t(p)];
          r.top1_agree += top[size_t(p)];
        }
      }
      r.windows += 1;
      r.tokens += P;
    }
    if (opt.progress) opt.progress(w + 1, nw);
  }
  for (auto& r : res) {
    r.ppl = std::exp(r.nll_sum / double(r.tokens));
    if (r.has_reference) {
      r.kl_mean = r.kl_sum / double(r.tokens);
      r.top1 = double(r.top1_agree) / double(r.tokens);
    }
  }
  return res;
}

}  // namespace qs::quant::eval
