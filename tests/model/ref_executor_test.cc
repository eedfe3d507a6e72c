// Tests of the CPU reference executor (model/ref/ref_executor.h) against model::Model's own forward over a
// per-sequence KvCache, on small random checkpoints (fake_checkpoint.h: GQA ratio 3, head_dim 16) and on the real
// qs-llama-tiny (QSERVE_DATA; skipped with a message when absent). Pages are handed out scrambled and
// non-contiguous, page sizes 16 and 64, contexts at page edges (1, 63, 64, 65, 257).
// Tolerance policy (TESTING.md, "Reference executor"): everything here is bit-exact (memcmp of logits and pool
// bytes, equal tokens). The executor runs the very same Model::forward; only the KV storage moves (copied, never
// recomputed: KV4 codes and FP16 params are imported, not requantized), and rows of the forward are independent
// of the batch. The one inexact comparison, HF greedy ids on the real model, is the golden test's, on token ids.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>

#include "common/test_util.h"
#include "model/fake_checkpoint.h"
#include "model/model.h"
#include "model/ref/ref_executor.h"

namespace qs::model {
namespace {

using ::testing::HasSubstr;
using qs::test::FakeSpec;

// ---- helpers ----

// A random checkpoint written to a temp folder and loaded (max_position_embeddings raised to 1024).
std::unique_ptr<Model> fake_model(const FakeSpec& s, const std::string& tag) {
  const std::string dir = qs::test::temp_dir("refexec_" + tag);
  auto cfg = qs::test::fake_config(s);
  cfg["max_position_embeddings"] = 1024;
  qs::test::write_checkpoint(dir, cfg, qs::test::fake_weights(s));
  auto m = Model::load(dir);
  std::filesystem::remove_all(dir);
  return m;
}

// GQA ratio 3 (6 query heads over 2 KV heads), head_dim 16, untied head.
FakeSpec gqa3_spec() {
  FakeSpec s;
  s.hidden = 24;
  s.intermediate = 40;
  s.layers = 2;
  s.heads = 6;
  s.kv_heads = 2;
  s.head_dim = 16;
  s.vocab = 37;
  s.tie = false;
  s.seed = 17;
  return s;
}

Model& gqa3() {
  static std::unique_ptr<Model> m = fake_model(gqa3_spec(), "gqa3");
  return *m;
}

std::vector<int32_t> random_ids(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(size_t(n), 0);
  for (auto& x : t) x = int32_t(rng() % uint64_t(vocab));
  return t;
}

// Hands out distinct page ids of [0, num_pages) in a scrambled order (never 0, 1, 2, ...).
class PagePool {
 public:
  PagePool(int64_t num_pages, uint64_t seed) : ids_(size_t(num_pages)) {
    std::iota(ids_.begin(), ids_.end(), 0);
    std::shuffle(ids_.begin(), ids_.end(), std::mt19937_64(seed));
  }
  std::vector<int32_t> take(int64_t n) {
    QS_CHECK(next_ + size_t(n) <= ids_.size()) << "test: page pool exhausted";
    std::vector<int32_t> out(ids_.begin() + int64_t(next_), ids_.begin() + int64_t(next_) + n);
    next_ += size_t(n);
    return out;
  }

 private:
  std::vector<int32_t> ids_;
  size_t next_ = 0;
};

int64_t pages_for(int64_t ctx, int32_t ps) { return (ctx + ps - 1) / ps; }

RefExecutorOptions opts(KvDType dt, int32_t page_size, int64_t num_pages) {
  RefExecutorOptions o;
  o.kv_dtype = dt;
  o.page_size = page_size;
  o.num_pages = num_pages;
  return o;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), size_t(a.numel()) * 4) == 0;
}
bool same_bits(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, size_t(n) * 4) == 0; }

// All pool bytes (K and V of every layer), to check that a step left them alone or two executors agree.
std::vector<uint8_t> pool_bytes(const RefExecutor& e) {
  std::vector<uint8_t> out;
  for (int l = 0; l < e.config().num_layers; ++l) {
    out.insert(out.end(), e.k_pool(l), e.k_pool(l) + e.layer_pool_bytes());
    out.insert(out.end(), e.v_pool(l), e.v_pool(l) + e.layer_pool_bytes());
  }
  return out;
}

// One sequence's step: `ids` at positions prefix .. prefix+n-1.
ForwardBatch single(const std::vector<int32_t>& ids, int32_t prefix, const std::vector<int32_t>& pages,
                    bool all_logits) {
  ForwardBatch b;
  b.add_sequence(ids.data(), int32_t(ids.size()), prefix, pages, !all_logits);
  b.all_logits = all_logits;
  return b;
}

// Checks that the pool slots of positions [0, n) of a sequence hold exactly what `cache` holds (FP32 floats, or
// KV4 packed codes and FP16 params).
void expect_pool_matches_cache(const RefExecutor& e, const std::vector<int32_t>& pages, const KvCache& cache,
                               int64_t n) {
  const auto& lay = e.layout();
  const int D = lay.head_dim, H = lay.num_kv_heads, ps = lay.page_size;
  int64_t bad = 0;
  for (int l = 0; l < e.config().num_layers; ++l)
    for (int64_t pos = 0; pos < n; ++pos)
      for (int h = 0; h < H; ++h) {
        const int32_t tok = int32_t(pos % ps);
        const int64_t blk = lay.block_offset(pages[size_t(pos / ps)], h);
        const size_t g = size_t(pos * H + h);
        for (int which = 0; which < 2; ++which) {
          const uint8_t* p = (which ? e.v_pool(l) : e.k_pool(l)) + blk;
          if (lay.dtype == KvDType::kFp32) {
            bad += std::memcmp(p + lay.data_offset(tok), (which ? cache.v(l) : cache.k(l)) + g * size_t(D),
                               size_t(D) * 4) != 0;
          } else {
            bad += std::memcmp(p + lay.data_offset(tok), (which ? cache.v4(l) : cache.k4(l)) + g * size_t(D / 2),
                               size_t(D / 2)) != 0;
            const fmt4::Kv4Params prm = (which ? cache.v4_params(l) : cache.k4_params(l))[g];
            uint16_t sc, zr;
            std::memcpy(&sc, p + lay.scale_offset(tok), 2);
            std::memcpy(&zr, p + lay.zero_offset(tok), 2);
            bad += sc != prm.scale || zr != prm.zero;
          }
        }
      }
  EXPECT_EQ(bad, 0) << "pool slots differing from the KvCache";
}

// ---- FP32: prompt logits through scrambled pages == Model::forward ----

TEST(RefExecutor, Fp32PromptLogitsEqualModelForwardOnScrambledPages) {
  Model& m = gqa3();
  for (int32_t ps : {16, 64}) {
    for (int64_t n : {1, 17, 63, 64, 65, 257}) {
      SCOPED_TRACE("page_size " + std::to_string(ps) + ", prompt " + std::to_string(n));
      RefExecutor e(m, opts(KvDType::kFp32, ps, 40));
      PagePool pp(40, uint64_t(n * 7 + ps));
      const auto pages = pp.take(pages_for(n, ps));
      const auto ids = random_ids(n, 37, uint64_t(n));
      const ForwardResult r = e.execute(single(ids, 0, pages, /*all_logits=*/true));
      KvCache cache = m.new_cache();
      const Tensor want = m.forward({{ids.data(), n, &cache}}, LogitsMode::kAll);
      EXPECT_TRUE(same_bits(r.logits, want));
      EXPECT_EQ(r.tokens, std::vector<int32_t>{-1});  // all_logits samples nothing
      expect_pool_matches_cache(e, pages, cache, n);

      // A decode step on top reads the prompt back from the scrambled pages: == the model decoding on its cache.
      const std::vector<int32_t> next{5};
      std::vector<int32_t> more = pages;
      if (pages_for(n + 1, ps) > int64_t(pages.size())) more.push_back(pp.take(1)[0]);
      ForwardBatch d = single(next, int32_t(n), more, false);
      d.return_logits = true;
      const ForwardResult rd = e.execute(d);
      const Tensor wd = m.forward({{next.data(), 1, &cache}}, LogitsMode::kLast);
      EXPECT_TRUE(same_bits(rd.logits, wd));
      EXPECT_EQ(rd.tokens[0], argmax(wd.data<float>(), 37));
    }
  }
}

// ---- batched == alone, bit for bit ----

struct MixedSeq {
  int64_t prefix;  // tokens cached by an earlier step
  int64_t q;       // new tokens in the mixed step
};

// Contexts 1, 63, 64, 65, 257 after the mixed step: a 1-token prompt, prefill chunks and decodes.
const MixedSeq kMixed[] = {{0, 1}, {40, 23}, {63, 1}, {64, 1}, {200, 57}, {0, 65}};

void run_batched_vs_alone(KvDType dt, int32_t ps) {
  Model& m = gqa3();
  const int64_t np = 48;
  RefExecutor batched(m, opts(dt, ps, np)), alone(m, opts(dt, ps, np));
  PagePool pp(np, 99);
  const size_t S = std::size(kMixed);
  std::vector<std::vector<int32_t>> ids(S), pages(S);
  for (size_t s = 0; s < S; ++s) {
    ids[s] = random_ids(kMixed[s].prefix + kMixed[s].q, 37, 1000 + s);
    pages[s] = pp.take(pages_for(kMixed[s].prefix + kMixed[s].q, ps));
  }
  // Step 1: the prefixes (all logits), one batch vs one by one.
  ForwardBatch b1;
  b1.all_logits = true;
  std::vector<Tensor> alone1;
  for (size_t s = 0; s < S; ++s) {
    if (kMixed[s].prefix == 0) continue;
    b1.add_sequence(ids[s].data(), int32_t(kMixed[s].prefix), 0, pages[s], false);
    std::vector<int32_t> pre(ids[s].begin(), ids[s].begin() + kMixed[s].prefix);
    alone1.push_back(alone.execute(single(pre, 0, pages[s], true)).logits);
  }
  const ForwardResult r1 = batched.execute(b1);
  int64_t row = 0;
  for (const Tensor& t : alone1) {
    EXPECT_TRUE(same_bits(r1.logits.data<float>() + row * 37, t.data<float>(), t.numel()));
    row += t.dim(0);
  }
  EXPECT_EQ(row, r1.logits.dim(0));
  EXPECT_TRUE(pool_bytes(batched) == pool_bytes(alone));

  // Step 2: the mixed batch, sampled with a temperature, logits returned; sequence 1 wants no output.
  ForwardBatch b2;
  b2.return_logits = true;
  SamplingParams sp;
  sp.temperature = 0.9f;
  sp.top_k = 9;
  sp.top_p = 0.95f;
  std::vector<int32_t> alone_tokens(S, -1);
  std::vector<Tensor> alone2(S);
  for (size_t s = 0; s < S; ++s) {
    sp.seed = 77 + s;
    const bool out = s != 1;
    const int32_t* p = ids[s].data() + kMixed[s].prefix;
    b2.add_sequence(p, int32_t(kMixed[s].q), int32_t(kMixed[s].prefix), pages[s], out, sp, 3 + s);
    ForwardBatch one;
    one.return_logits = true;
    one.add_sequence(p, int32_t(kMixed[s].q), int32_t(kMixed[s].prefix), pages[s], out, sp, 3 + s);
    const ForwardResult r = alone.execute(one);
    alone_tokens[s] = r.tokens[0];
    alone2[s] = r.logits;
  }
  const ForwardResult r2 = batched.execute(b2);
  EXPECT_EQ(r2.tokens, alone_tokens);
  EXPECT_EQ(r2.tokens[1], -1);
  ASSERT_EQ(r2.logits.dim(0), int64_t(S) - 1);
  row = 0;
  for (size_t s = 0; s < S; ++s) {
    if (s == 1) {
      EXPECT_FALSE(alone2[s].raw());  // no output row, no logits computed
      continue;
    }
    EXPECT_TRUE(same_bits(r2.logits.data<float>() + row * 37, alone2[s].data<float>(), 37)) << "sequence " << s;
    ++row;
  }
  EXPECT_TRUE(pool_bytes(batched) == pool_bytes(alone));
}

TEST(RefExecutor, BatchedEqualsAloneFp32) {
  run_batched_vs_alone(KvDType::kFp32, 16);
  run_batched_vs_alone(KvDType::kFp32, 64);
}

TEST(RefExecutor, BatchedEqualsAloneKv4) {
  run_batched_vs_alone(KvDType::kKv4, 16);
  run_batched_vs_alone(KvDType::kKv4, 64);
}

// ---- chunked prefill ----

// Runs `ids` in chunks of `chunk` tokens (all logits) and returns the concatenated logits [n, vocab].
std::vector<float> chunked_logits(RefExecutor& e, const std::vector<int32_t>& ids, int64_t chunk,
                                  const std::vector<int32_t>& pages, bool quantized_self_kv = false) {
  std::vector<float> out;
  for (int64_t p0 = 0; p0 < int64_t(ids.size()); p0 += chunk) {
    const int64_t q = std::min<int64_t>(chunk, int64_t(ids.size()) - p0);
    ForwardBatch b;
    b.add_sequence(ids.data() + p0, int32_t(q), int32_t(p0), pages, false);
    b.all_logits = true;
    b.quantized_self_kv = quantized_self_kv;
    const Tensor t = e.execute(b).logits;
    out.insert(out.end(), t.data<float>(), t.data<float>() + t.numel());
  }
  return out;
}

const int64_t kChunks[] = {1, 17, 64, 65};

TEST(RefExecutor, ChunkedPrefillEqualsWholePrefillFp32) {
  Model& m = gqa3();
  const int64_t n = 257;
  const auto ids = random_ids(n, 37, 5);
  for (int32_t ps : {16, 64}) {
    const int64_t np = pages_for(n, ps) + 3;
    RefExecutor whole(m, opts(KvDType::kFp32, ps, np));
    PagePool pp(np, 3);
    const auto pages = pp.take(pages_for(n, ps));
    const Tensor w = whole.execute(single(ids, 0, pages, true)).logits;
    for (int64_t c : kChunks) {
      SCOPED_TRACE("page_size " + std::to_string(ps) + ", chunk " + std::to_string(c));
      RefExecutor e(m, opts(KvDType::kFp32, ps, np));
      const auto lg = chunked_logits(e, ids, c, pages);
      ASSERT_EQ(int64_t(lg.size()), w.numel());
      EXPECT_TRUE(same_bits(lg.data(), w.data<float>(), w.numel()));
      EXPECT_TRUE(pool_bytes(e) == pool_bytes(whole));
    }
  }
}

// KV4, the exact expectation: a prompt run in chunks through the executor equals Model::forward over one KV4
// KvCache with the same chunks and fp_self_kv = (chunk length > 1) (executor.h's rule), logits and pool bytes. It
// is NOT the whole prefill: rows after the first chunk see earlier chunks' K/V quantized. With quantized_self_kv
// every key and value is read quantized, so there chunking changes nothing (the perplexity protocol).
TEST(RefExecutor, ChunkedPrefillKv4FollowsTheFpSelfKvRule) {
  Model& m = gqa3();
  const int64_t n = 257, V = 37;
  const auto ids = random_ids(n, 37, 6);
  const int32_t ps = 16;
  const int64_t np = pages_for(n, ps) + 2;
  PagePool pp(np, 4);
  const auto pages = pp.take(pages_for(n, ps));
  RefExecutor whole(m, opts(KvDType::kKv4, ps, np));
  const Tensor w = whole.execute(single(ids, 0, pages, true)).logits;
  for (int64_t c : kChunks) {
    SCOPED_TRACE("chunk " + std::to_string(c));
    RefExecutor e(m, opts(KvDType::kKv4, ps, np));
    const auto lg = chunked_logits(e, ids, c, pages);
    KvCache cache = m.new_cache(KvMode::kKv4);
    std::vector<float> want;
    for (int64_t p0 = 0; p0 < n; p0 += c) {
      const int64_t q = std::min(c, n - p0);
      SeqInput si{ids.data() + p0, q, &cache, /*fp_self_kv=*/q > 1};
      const Tensor t = m.forward({si}, LogitsMode::kAll);
      want.insert(want.end(), t.data<float>(), t.data<float>() + t.numel());
    }
    ASSERT_EQ(lg.size(), want.size());
    EXPECT_TRUE(same_bits(lg.data(), want.data(), int64_t(lg.size())));
    expect_pool_matches_cache(e, pages, cache, n);
    // Against the whole prefill: the first chunk's rows are the same computation (c > 1); later rows are not.
    if (c > 1) EXPECT_TRUE(same_bits(lg.data(), w.data<float>(), c * V));
    EXPECT_FALSE(same_bits(lg.data() + (n - 1) * V, w.data<float>() + (n - 1) * V, V));
    // Quantized self K/V: chunked == whole == the fake-quantized Model::forward (fp_self_kv = false).
    RefExecutor qe(m, opts(KvDType::kKv4, ps, np)), qw(m, opts(KvDType::kKv4, ps, np));
    const auto qlg = chunked_logits(qe, ids, c, pages, true);
    const auto qwhole = chunked_logits(qw, ids, n, pages, true);
    KvCache fq = m.new_cache(KvMode::kKv4);
    const Tensor fake = m.forward({{ids.data(), n, &fq}}, LogitsMode::kAll);
    EXPECT_TRUE(same_bits(qlg.data(), qwhole.data(), n * V));
    EXPECT_TRUE(same_bits(qwhole.data(), fake.data<float>(), n * V));
    EXPECT_TRUE(pool_bytes(qe) == pool_bytes(qw));
  }
  // The whole KV4 prefill stored exactly the codes a KV4 KvCache computes for these K/V.
  KvCache cache = m.new_cache(KvMode::kKv4);
  const Tensor t = m.forward({{ids.data(), n, &cache, true}}, LogitsMode::kAll);
  EXPECT_TRUE(same_bits(t, w));
  expect_pool_matches_cache(whole, pages, cache, n);
}

// The KV4 pool bytes themselves, checked against formats.h directly (not through KvCache): the K of every token
// of an FP32 run, quantized with quantize_kv4_group, is what a KV4 prefill of the same prompt stores (the K/V of
// the first layer only depend on the embeddings, so they are the same in both runs).
TEST(RefExecutor, Kv4PoolBytesAreTheFormatsCodesOfLayer0) {
  Model& m = gqa3();
  const int64_t n = 70;
  const auto ids = random_ids(n, 37, 8);
  const int32_t ps = 64;
  const std::vector<int32_t> pages{3, 1};
  RefExecutor fp(m, opts(KvDType::kFp32, ps, 4)), q4(m, opts(KvDType::kKv4, ps, 4));
  fp.execute(single(ids, 0, pages, true));
  q4.execute(single(ids, 0, pages, true));
  const auto& lf = fp.layout();
  const auto& lq = q4.layout();
  const int D = lq.head_dim;
  int64_t bad = 0;
  for (int64_t pos = 0; pos < n; ++pos)
    for (int h = 0; h < lq.num_kv_heads; ++h)
      for (int which = 0; which < 2; ++which) {
        const int32_t tok = int32_t(pos % ps), page = pages[size_t(pos / ps)];
        const uint8_t* fblk = (which ? fp.v_pool(0) : fp.k_pool(0)) + lf.block_offset(page, h);
        const uint8_t* qblk = (which ? q4.v_pool(0) : q4.k_pool(0)) + lq.block_offset(page, h);
        std::vector<float> x(static_cast<size_t>(D));
        std::memcpy(x.data(), fblk + lf.data_offset(tok), size_t(D) * 4);
        std::vector<uint8_t> codes(size_t(D / 2), 0);
        const fmt4::Kv4Params prm = fmt4::quantize_kv4_group(x.data(), D, codes.data());
        uint16_t sc, zr;
        std::memcpy(&sc, qblk + lq.scale_offset(tok), 2);
        std::memcpy(&zr, qblk + lq.zero_offset(tok), 2);
        bad += std::memcmp(codes.data(), qblk + lq.data_offset(tok), size_t(D / 2)) != 0 || sc != prm.scale ||
               zr != prm.zero;
      }
  EXPECT_EQ(bad, 0);
}

// ---- sampling ----

TEST(RefExecutor, SamplingIsReproducibleAloneAndInABatch) {
  Model& m = gqa3();
  const int32_t ps = 16;
  RefExecutor a(m, opts(KvDType::kFp32, ps, 16)), b(m, opts(KvDType::kFp32, ps, 16));
  const auto ids = random_ids(20, 37, 9), other = random_ids(33, 37, 10);
  const std::vector<int32_t> pa{7, 2}, po{0, 9, 4};
  std::set<int32_t> seen;
  for (uint64_t seed : {1u, 2u, 3u, 1234567u}) {
    for (uint64_t step : {0u, 1u, 41u}) {
      SamplingParams sp;
      sp.temperature = 1.5f;
      sp.top_k = 20;
      sp.top_p = 0.9f;
      sp.seed = seed;
      ForwardBatch one;
      one.return_logits = true;
      one.add_sequence(ids.data(), 20, 0, pa, true, sp, step);
      const ForwardResult r1 = a.execute(one);
      const ForwardResult r1again = a.execute(one);  // same slots rewritten with the same bytes
      ForwardBatch two;
      SamplingParams greedy;
      two.add_sequence(other.data(), 33, 0, po, true, greedy, 5);
      two.add_sequence(ids.data(), 20, 0, pa, true, sp, step);
      const ForwardResult r2 = b.execute(two);
      EXPECT_EQ(r1.tokens[0], r1again.tokens[0]);
      EXPECT_EQ(r1.tokens[0], r2.tokens[1]);
      EXPECT_EQ(r1.tokens[0], Sampler(sp).sample_at(r1.logits.data<float>(), 37, {}, step));
      seen.insert(r1.tokens[0]);
    }
  }
  EXPECT_GE(seen.size(), 3u);  // the seed and step matter (12 draws at temperature 1.5 over 20 candidates)
}

// ---- bad batches ----

TEST(RefExecutor, BadBatchesThrowAndLeaveThePoolAlone) {
  Model& m = gqa3();
  RefExecutorOptions o = opts(KvDType::kKv4, 16, 8);
  o.max_batch_tokens = 100;
  o.max_batch_seqs = 3;
  RefExecutor e(m, o);
  const auto ids = random_ids(40, 37, 11);
  e.execute(single(ids, 0, {5, 2, 6}, true));  // positions 0..39 cached in pages 5, 2, 6
  const std::vector<uint8_t> before = pool_bytes(e);
  auto err = [&](ForwardBatch b) { return qs::test::error_of([&] { e.execute(b); }); };
  const std::vector<int32_t> one{3};

  EXPECT_THAT(err(single(one, 40, {5, 2, 8}, false)), HasSubstr("outside the pool"));
  {
    ForwardBatch b = single(one, 40, {5, 2, 6}, false);
    b.positions[0] = 39;
    EXPECT_THAT(err(b), HasSubstr("has position 39, expected 40"));
  }
  EXPECT_THAT(err(single(one, 48, {5, 2, 6}, false)), HasSubstr("needs 4 pages"));
  EXPECT_THAT(err(single({37}, 40, {5, 2, 6}, false)), HasSubstr("outside the vocabulary"));
  {
    RefExecutorOptions small = o;
    small.num_pages = 2;  // max context 32 tokens
    RefExecutor s(m, small);
    const auto before_s = pool_bytes(s);
    EXPECT_THAT(qs::test::error_of([&] { s.execute(single(random_ids(33, 37, 1), 0, {0, 1, 1}, true)); }),
                HasSubstr("max context 32"));
    EXPECT_TRUE(pool_bytes(s) == before_s);
  }
  {
    ForwardBatch b = single(one, 40, {5, 2, 6}, false);
    b.cu_seqlens.push_back(1);
    EXPECT_THAT(err(b), HasSubstr("cu_seqlens has 3 entries for 1 sequences"));
    ForwardBatch c = single(one, 40, {5, 2, 6}, false);
    c.positions.push_back(41);
    EXPECT_THAT(err(c), HasSubstr("2 positions for 1 tokens"));
    ForwardBatch d = single(one, 40, {5, 2, 6}, false);
    d.sample_step.clear();
    EXPECT_THAT(err(d), HasSubstr("one entry per sequence"));
  }
  EXPECT_THAT(err(single(random_ids(101, 37, 2), 0, {0, 1, 3, 4, 7, 0, 0}, true)),
              HasSubstr("more than max_batch_tokens 100"));
  {
    ForwardBatch b;
    for (int s = 0; s < 4; ++s) b.add_sequence(one.data(), 1, 0, {s == 3 ? 7 : s}, true);
    EXPECT_THAT(err(b), HasSubstr("more than max_batch_seqs 3"));
  }
  {
    ForwardBatch b;  // two sequences writing the same slot
    b.add_sequence(one.data(), 1, 0, {0}, true);
    b.add_sequence(one.data(), 1, 0, {0}, true);
    EXPECT_THAT(err(b), HasSubstr("which sequence 0 also writes"));
    ForwardBatch c;  // one sequence writes a slot another reads as its prefix
    c.add_sequence(one.data(), 1, 40, {5, 2, 6}, true);
    c.add_sequence(ids.data(), 2, 0, {5}, true);
    EXPECT_THAT(err(c), HasSubstr("reads cached position 0 from page 5 slot 0, which sequence 1 writes"));
  }
  {
    SamplingParams sp;
    sp.repetition_penalty = 1.2f;
    ForwardBatch b;
    b.add_sequence(one.data(), 1, 40, {5, 2, 6}, true, sp);
    EXPECT_THAT(err(b), HasSubstr("repetition_penalty"));
    sp.repetition_penalty = 1.0f;
    sp.top_p = 0.0f;
    ForwardBatch c;
    c.add_sequence(one.data(), 1, 40, {5, 2, 6}, true, sp);
    EXPECT_THAT(err(c), HasSubstr("top_p"));
  }
  // A prefix in pages nobody wrote: the 0xFF poison reaches the logits, the step throws naming the sequence and
  // writes nothing.
  {
    ForwardBatch b;
    b.add_sequence(one.data(), 1, 40, {5, 2, 6}, true);
    b.add_sequence(one.data(), 1, 5, {7}, true);
    EXPECT_THAT(err(b), HasSubstr("sequence 1 produced a non-finite logit"));
  }
  EXPECT_TRUE(pool_bytes(e) == before);
  // ... and the executor still works afterwards.
  KvCache cache = m.new_cache(KvMode::kKv4);
  m.forward({{ids.data(), 40, &cache, true}}, LogitsMode::kNone);
  ForwardBatch d = single(one, 40, {5, 2, 6}, false);
  d.return_logits = true;
  EXPECT_TRUE(same_bits(e.execute(d).logits, m.forward({{one.data(), 1, &cache}}, LogitsMode::kLast)));
}

TEST(RefExecutor, BadOptionsThrow) {
  Model& m = gqa3();
  auto make = [&](KvDType dt, int32_t ps, int64_t np) {
    return qs::test::error_of([&] { RefExecutor e(m, opts(dt, ps, np)); });
  };
  EXPECT_THAT(make(KvDType::kFp32, 24, 4), HasSubstr("multiple of 16"));
  EXPECT_THAT(make(KvDType::kFp16, 16, 4), HasSubstr("not supported by the CPU reference"));
  EXPECT_THAT(make(KvDType::kFp32, 16, 0), HasSubstr("num_pages"));
  RefExecutor e(m, opts(KvDType::kKv4, 32, 5));
  EXPECT_EQ(e.max_context(), 160);
  EXPECT_EQ(e.pool().bytes_per_page, 2 * 2 * 2 * 32 * (16 / 2 + 4));  // K+V, layers, kv heads, block bytes
  EXPECT_EQ(e.name(), "cpu-ref fp32 weights, kv kv4");
}

// ---- the real model ----

const char* kTiny = "models/qs-llama-tiny";
const char* kGenerations = "fixtures/reference_generations.json";

// The 8 reference prompts prefilled in one batch and decoded greedily in batches of 8 through scrambled pages:
// prompt logits == Model::forward bit for bit, and the 32 greedy tokens == HF transformers' greedy_ids.
TEST(RefExecutorRealModel, PromptLogitsAndGreedyDecodeOfTheReferencePrompts) {
  QS_REQUIRE_DATA(kTiny);
  QS_REQUIRE_DATA(kGenerations);
  std::ifstream f(qs::test::data_path(kGenerations));
  const auto j = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> prompts, greedy;
  for (const auto& c : j["cases"]) {
    prompts.push_back(c["input_ids"].get<std::vector<int32_t>>());
    greedy.push_back(c["greedy_ids"].get<std::vector<int32_t>>());
  }
  ASSERT_EQ(prompts.size(), 8u);
  auto m = Model::load(qs::test::data_path(kTiny));
  const int64_t V = m->config().vocab_size;
  const int32_t ps = 16;
  RefExecutor e(*m, opts(KvDType::kFp32, ps, 64));
  PagePool pp(64, 21);
  std::vector<std::vector<int32_t>> pages;
  for (const auto& p : prompts) pages.push_back(pp.take(pages_for(int64_t(p.size()) + 32, ps)));

  ForwardBatch pre;
  pre.all_logits = true;
  for (size_t s = 0; s < prompts.size(); ++s)
    pre.add_sequence(prompts[s].data(), int32_t(prompts[s].size()), 0, pages[s], false);
  const Tensor lg = e.execute(pre).logits;
  std::vector<std::vector<int32_t>> out(prompts.size());
  int64_t row = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    KvCache cache = m->new_cache();
    const int64_t n = int64_t(prompts[s].size());
    const Tensor want = m->forward({{prompts[s].data(), n, &cache}}, LogitsMode::kAll);
    EXPECT_TRUE(same_bits(lg.data<float>() + row * V, want.data<float>(), n * V)) << "prompt " << s;
    row += n;
    out[s].push_back(argmax(lg.data<float>() + (row - 1) * V, V));
  }
  for (int step = 1; step < 32; ++step) {
    ForwardBatch d;
    for (size_t s = 0; s < prompts.size(); ++s)
      d.add_sequence(&out[s].back(), 1, int32_t(prompts[s].size()) + step - 1, pages[s], true, {}, uint64_t(step));
    const ForwardResult r = e.execute(d);
    for (size_t s = 0; s < prompts.size(); ++s) out[s].push_back(r.tokens[s]);
  }
  for (size_t s = 0; s < prompts.size(); ++s) EXPECT_EQ(out[s], greedy[s]) << "prompt " << s;
}

}  // namespace
}  // namespace qs::model
