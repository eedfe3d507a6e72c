// Generation loop (see generate.h).
#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace qs::runtime {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kMaxTokens: return "length";
    case StopReason::kEos: return "eos";
    case StopReason::kStopString: return "stop";
    case StopReason::kContextFull: return "context_full";
  }
  return "?";
}

namespace {

struct SeqState {
  model::KvCache cache;
  Sampler sampler;
  std::vector<int32_t> history;  // prompt + generated
  GenerateResult result;
  size_t emitted = 0;  // bytes of result.text already streamed
  bool done = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<GenerateResult> generate_batch(model::Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opts, const std::vector<TokenText>& texts,
                                           const OnText& on_text, GenerateStats* stats) {
  QS_CHECK(!prompts.empty()) << "generate: no prompts";
  QS_CHECK(opts.max_new_tokens >= 0) << "generate: max_new_tokens must be >= 0, got " << opts.max_new_tokens;
  QS_CHECK(texts.empty() || texts.size() == prompts.size())
      << "generate: " << texts.size() << " text decoders for " << prompts.size() << " prompts";
  QS_CHECK(opts.stop_strings.empty() || !texts.empty()) << "generate: stop strings need a text decoder";
  for (const auto& s : opts.stop_strings) QS_CHECK(!s.empty()) << "generate: empty stop string";
  validate(opts.sampling);
  const int64_t V = model.config().vocab_size;
  const int64_t max_ctx = model.config().max_position_embeddings;
  size_t longest_stop = 0;
  for (const auto& s : opts.stop_strings) longest_stop = std::max(longest_stop, s.size());

  std::vector<SeqState> seqs;
  seqs.reserve(prompts.size());
  GenerateStats st;
  for (size_t i = 0; i < prompts.size(); ++i) {
    QS_CHECK(!prompts[i].empty()) << "generate: prompt " << i << " is empty";
    QS_CHECK(max_ctx <= 0 || int64_t(prompts[i].size()) <= max_ctx)
        << "generate: prompt " << i << " has " << prompts[i].size() << " tokens, the context holds " << max_ctx;
    seqs.push_back({model.new_cache(opts.kv_mode), Sampler(opts.sampling), prompts[i], {}, 0, false});
    st.prompt_tokens += int64_t(prompts[i].size());
  }

  // Accepts token `id` for sequence i: records it, updates text and stop conditions, streams safe text.
  auto accept = [&](size_t i, int32_t id) {
    SeqState& s = seqs[i];
    s.result.tokens.push_back(id);
    s.history.push_back(id);
    ++st.generated_tokens;
    const bool eos = std::find(opts.eos_ids.begin(), opts.eos_ids.end(), id) != opts.eos_ids.end();
    if (eos) {
      s.done = true;
      s.result.reason = StopReason::kEos;
    } else if (!texts.empty()) {
      const size_t before = s.result.text.size();
      s.result.text += texts[i](id);
      // A stop string may straddle the previous pieces: search from where it could start.
      const size_t from = before >= longest_stop ? before - longest_stop + 1 : 0;
      size_t cut = std::string::npos;
      for (const auto& stop : opts.stop_strings) cut = std::min(cut, s.result.text.find(stop, from));
      if (cut != std::string::npos) {
        s.result.text.resize(cut);
        s.done = true;
        s.result.reason = StopReason::kStopString;
      }
    }
    if (!s.done && int64_t(s.result.tokens.size()) >= opts.max_new_tokens) {
      s.done = true;
      s.result.reason = StopReason::kMaxTokens;
    }
    if (!s.done && max_ctx > 0 && int64_t(s.history.size()) >= max_ctx) {
      s.done = true;
      s.result.reason = StopReason::kContextFull;
    }
    if (on_text && !texts.empty()) {
      // While running, hold back the bytes that could begin a stop string.
      size_t safe = s.result.text.size();
      if (!s.done && longest_stop > 0) safe = safe >= longest_stop - 1 ? safe - (longest_stop - 1) : 0;
      if (safe > s.emitted) {
        on_text(i, s.result.text.substr(s.emitted, safe - s.emitted));
        s.emitted = safe;
      }
    }
  };

  auto t0 = std::chrono::steady_clock::now();
  if (opts.max_new_tokens > 0) {
    std::vector<model::SeqInput> batch;
    for (auto& s : seqs)
      batch.push_back({s.history.data(), int64_t(s.history.size()), &s.cache, opts.fp_prefill_self_kv});
    Tensor logits = model.forward(batch, model::LogitsMode::kLast);
    for (size_t i = 0; i < seqs.size(); ++i)
      accept(i, seqs[i].sampler.sample(logits.data<float>() + int64_t(i) * V, V, seqs[i].history));
  } else {
    for (auto& s : seqs) s.done = true;
  }
  st.prefill_seconds = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  for (;;) {
    std::vector<size_t> active;
    std::vector<model::SeqInput> batch;
    for (size_t i = 0; i < seqs.size(); ++i)
      if (!seqs[i].done) {
        active.push_back(i);
        batch.push_back({&seqs[i].history.back(), 1, &seqs[i].cache});
      }
    if (active.empty()) break;
    Tensor logits = model.forward(batch, model::LogitsMode::kLast);
    for (size_t a = 0; a < active.size(); ++a) {
      SeqState& s = seqs[active[a]];
      accept(active[a], s.sampler.sample(logits.data<float>() + int64_t(a) * V, V, s.history));
    }
  }
  st.decode_seconds = seconds_since(t0);

  std::vector<GenerateResult> out;
  for (auto& s : seqs) out.push_back(std::move(s.result));
  if (stats) *stats = st;
  return out;
}

}  // namespace qs::runtime
