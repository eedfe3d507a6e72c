// A fake model::Executor for the runtime tests: no model, but a shadow KV pool that proves the block manager and
// scheduler right. Each (page, slot) holds {token id, position, chain hash}, where chain(p) = mix(chain(p-1),
// token(p)) is a hash of the sequence's whole context up to p. execute() validates the batch, writes every new
// token into its slot (computing its chain from the slot of position p-1, read through the block table), then
// CHECKS every position 0 .. context-1 of every sequence: the slot was written, holds that position, and its
// chain follows from the previous slot's. A page shared by the wrong sequence, a page freed while still in use,
// a missed slot or a prefix-cache hit on different content breaks a chain and throws. The next token of a
// sequence is chain(context-1) % vocab (greedy), i.e. a hash of its whole context, so expected outputs can be
// computed without the engine (expected_greedy). Logits: small pseudo-random values with +5 on that token, so
// model::Sampler picks the same greedy token and seeded sampling is exercised too.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/executor.h"

namespace qs::runtime::testing {

class FakeExecutor : public model::Executor {
 public:
  static constexpr uint64_t kSeed = 0x243F6A8885A308D3ull;

  FakeExecutor(int32_t page_size, int64_t num_pages, int32_t vocab = 97, int64_t max_context = 4096,
               int32_t max_batch_tokens = 1 << 20, int32_t max_batch_seqs = 1 << 20)
      : max_context_(max_context), max_tokens_(max_batch_tokens), max_seqs_(max_batch_seqs) {
    pool_.page_size = page_size;
    pool_.num_pages = num_pages;
    pool_.dtype = KvDType::kFp32;
    pool_.bytes_per_page = int64_t(page_size) * 16;
    cfg_.vocab_size = vocab;
    cfg_.max_position_embeddings = int(max_context);
    cfg_.model_type = "fake";
    slots_.assign(size_t(num_pages) * size_t(page_size), Slot{});
  }

  static uint64_t mix(uint64_t h, int32_t token) {
    uint64_t z = h ^ (uint64_t(uint32_t(token)) + 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  static uint64_t chain_of(const std::vector<int32_t>& ctx) {
    uint64_t h = kSeed;
    for (int32_t t : ctx) h = mix(h, t);
    return h;
  }
  // The greedy continuation of `prompt` (n tokens), computed without any cache.
  std::vector<int32_t> expected_greedy(std::vector<int32_t> ctx, int32_t n) const {
    std::vector<int32_t> out;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t t = int32_t(chain_of(ctx) % uint64_t(cfg_.vocab_size));
      out.push_back(t);
      ctx.push_back(t);
    }
    return out;
  }
  // The logits row of a context with chain hash h.
  void logits_row(uint64_t h, float* row) const {
    for (int32_t v = 0; v < cfg_.vocab_size; ++v) row[v] = float(mix(h, v) >> 40) * 0x1.0p-24f;
    row[h % uint64_t(cfg_.vocab_size)] += 5.0f;
    if (poison && h == poison_chain) row[0] = NAN;
  }

  std::string name() const override { return "fake"; }
  const io::ModelConfig& config() const override { return cfg_; }
  model::KvPoolInfo pool() const override { return pool_; }
  int64_t max_context() const override { return max_context_; }
  int32_t max_batch_tokens() const override { return max_tokens_; }
  int32_t max_batch_seqs() const override { return max_seqs_; }

  model::ForwardResult execute(const model::ForwardBatch& b) override {
    b.validate(pool_.page_size, pool_.num_pages, cfg_.vocab_size, max_context_);
    if (before_execute) before_execute();
    if (fail_next) {
      fail_next = false;
      QS_FAIL() << "fake executor: injected failure";
    }
    QS_CHECK(b.num_tokens() <= max_tokens_ && b.num_seqs() <= max_seqs_) << "fake executor: batch over limits";
    for (int32_t s = 0; s < b.num_seqs(); ++s)  // like the reference executor: a batch carries no history
      QS_CHECK(!b.need_output[size_t(s)] || b.sampling[size_t(s)].repetition_penalty == 1.0f)
          << "fake executor: a repetition penalty reached the executor";
    ++steps;
    tokens_processed += b.num_tokens();
    max_step_tokens = std::max<int64_t>(max_step_tokens, b.num_tokens());
    if (b.is_decode()) ++decode_steps;
    const int32_t P = pool_.page_size;
    auto slot = [&](int32_t s, int32_t p) -> Slot& {
      return slots_[size_t(b.pages(s)[p / P]) * size_t(P) + size_t(p % P)];
    };
    model::ForwardResult r;
    r.tokens.assign(size_t(b.num_seqs()), -1);
    const int32_t rows = b.return_logits ? b.num_output_rows() : 0;
    if (rows > 0) r.logits = Tensor(DType::F32, {rows, int64_t(cfg_.vocab_size)});
    int32_t row = 0;
    for (int32_t s = 0; s < b.num_seqs(); ++s) {
      const int32_t prefix = b.prefix_len(s), ctx = b.context_lens[size_t(s)];
      for (int32_t p = prefix; p < ctx; ++p) {
        uint64_t prev = kSeed;
        if (p > 0) {
          const Slot& q = slot(s, p - 1);
          QS_CHECK(q.pos == p - 1) << "fake executor: sequence " << s << " position " << p - 1
                                   << " is not in the cache (slot holds position " << q.pos << ")";
          prev = q.chain;
        }
        const int32_t t = b.token_ids[size_t(b.cu_seqlens[size_t(s)] + p - prefix)];
        slot(s, p) = {t, p, mix(prev, t)};
      }
      // The whole context must be a consistent chain.
      uint64_t h = kSeed;
      for (int32_t p = 0; p < ctx; ++p) {
        const Slot& q = slot(s, p);
        QS_CHECK(q.pos == p && q.chain == mix(h, q.token))
            << "fake executor: sequence " << s << " position " << p << " of " << ctx
            << " holds a wrong token (page " << b.pages(s)[p / P] << ")";
        h = q.chain;
      }
      if (!b.need_output[size_t(s)]) continue;
      std::vector<float> l(static_cast<size_t>(cfg_.vocab_size));
      logits_row(h, l.data());
      // Like the reference executor: non-finite logits reject the whole batch (before any state would change
      // for real; this fake's slot writes are idempotent, so a rerun rewrites the same values).
      QS_CHECK(!throw_on_nonfinite || std::isfinite(l[0])) << "fake executor: non-finite logits in sequence " << s;
      model::Sampler sampler(b.sampling[size_t(s)]);
      r.tokens[size_t(s)] = sampler.sample_at(l.data(), cfg_.vocab_size, {}, b.sample_step[size_t(s)]);
      if (rows > 0) std::copy(l.begin(), l.end(), r.logits.data<float>() + int64_t(row++) * cfg_.vocab_size);
    }
    return r;
  }

  // Test hooks and counters.
  bool fail_next = false;     // the next execute() throws (after validation)
  std::function<void()> before_execute;  // called at the start of every execute() (e.g. to block the engine)
  bool poison = false;        // the context whose chain hash is poison_chain gets a NaN logit
  uint64_t poison_chain = 0;
  bool throw_on_nonfinite = false;  // a NaN logit throws (as the reference executor does) instead of returning
  int64_t steps = 0, decode_steps = 0, tokens_processed = 0, max_step_tokens = 0;

 private:
  struct Slot {
    int32_t token = -1, pos = -1;
    uint64_t chain = 0;
  };
  io::ModelConfig cfg_;
  model::KvPoolInfo pool_;
  int64_t max_context_;
  int32_t max_tokens_, max_seqs_;
  std::vector<Slot> slots_;
};

}  // namespace qs::runtime::testing
