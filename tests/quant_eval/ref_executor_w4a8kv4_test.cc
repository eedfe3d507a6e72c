// The reference executor (model/ref) on the exact W4A8KV4 integer path: a model quantized in memory with RTN
// (quant/eval/rtn_model.h: W4A8 per-channel and g128 QuantizedLinear, per-token INT8 activations, FP16 head) over
// a KV4 pool. Bit-exact expectations (TESTING.md, "Reference executor"): a mixed batch equals each sequence
// alone (logits, tokens and every pool byte); a prompt prefilled in chunks and then decoded equals Model::forward
// over one KV4 KvCache with the same steps and fp_self_kv = (q_len > 1), and the pool holds that cache's codes.
// On qs-llama-tiny (skipped without QSERVE_DATA) the 8 reference prompts decode greedily through the executor
// exactly as through the model's own cache.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/ref/ref_executor.h"
#include "quant/eval/rtn_model.h"
#include "quant_eval/eval_test_util.h"

namespace qs {
namespace {

using model::ForwardBatch;
using model::KvCache;
using model::LogitsMode;
using model::RefExecutor;

bool same_bits(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, size_t(n) * 4) == 0; }

std::vector<uint8_t> pool_bytes(const RefExecutor& e) {
  std::vector<uint8_t> out;
  for (int l = 0; l < e.config().num_layers; ++l) {
    out.insert(out.end(), e.k_pool(l), e.k_pool(l) + e.layer_pool_bytes());
    out.insert(out.end(), e.v_pool(l), e.v_pool(l) + e.layer_pool_bytes());
  }
  return out;
}

model::RefExecutorOptions kv4(int32_t page_size, int64_t pages) {
  model::RefExecutorOptions o;
  o.kv_dtype = KvDType::kKv4;
  o.page_size = page_size;
  o.num_pages = pages;
  return o;
}

class W4A8Kv4Executor : public ::testing::TestWithParam<quant::eval::RtnScheme> {};

TEST_P(W4A8Kv4Executor, MixedBatchEqualsAloneAndChunksFollowTheRule) {
  auto m = test::tiny_random_model(31);
  quant::eval::apply_rtn(*m, GetParam());
  const int64_t V = m->config().vocab_size;
  RefExecutor batched(*m, kv4(16, 40)), alone(*m, kv4(16, 40));
  ASSERT_EQ(batched.name(), "cpu-ref quantized weights, kv kv4");
  // Sequence s: a prompt of n[s] tokens in chunks of c[s] tokens, then 3 decode steps; pages scrambled.
  const int64_t n[] = {1, 63, 64, 65, 130}, c[] = {1, 17, 64, 65, 40};
  const std::vector<std::vector<int32_t>> pages = {
      {39}, {7, 3, 30, 12, 2}, {5, 22, 8, 0, 9}, {11, 4, 31, 6, 15}, {20, 1, 33, 19, 27, 13, 25, 10, 38, 17}};
  std::vector<std::vector<int32_t>> ids(5);
  std::vector<KvCache> caches;
  for (int s = 0; s < 5; ++s) {
    ids[size_t(s)] = test::random_tokens(n[s] + 3, 101, 40 + uint64_t(s));
    caches.push_back(m->new_cache(model::KvMode::kKv4));
  }
  std::vector<int64_t> done(5, 0);
  for (int step = 0; step < 12; ++step) {
    ForwardBatch b;
    b.return_logits = true;
    std::vector<int> in_batch;
    std::vector<std::vector<float>> alone_rows;
    std::vector<int32_t> alone_tokens;
    for (int s = 0; s < 5; ++s) {
      const int64_t total = n[s] + 3;
      if (done[size_t(s)] == total) continue;
      const int64_t q = done[size_t(s)] < n[s] ? std::min(c[s], n[s] - done[size_t(s)]) : 1;
      const int32_t* p = ids[size_t(s)].data() + done[size_t(s)];
      b.add_sequence(p, int32_t(q), int32_t(done[size_t(s)]), pages[size_t(s)]);
      ForwardBatch one;
      one.return_logits = true;
      one.add_sequence(p, int32_t(q), int32_t(done[size_t(s)]), pages[size_t(s)]);
      const auto r = alone.execute(one);
      alone_tokens.push_back(r.tokens[0]);
      alone_rows.emplace_back(r.logits.data<float>(), r.logits.data<float>() + V);
      // The model's own cache with the executor's rule.
      const model::SeqInput si{p, q, &caches[size_t(s)], /*fp_self_kv=*/q > 1};
      const Tensor want = m->forward({si}, LogitsMode::kLast);
      EXPECT_TRUE(same_bits(r.logits.data<float>(), want.data<float>(), V)) << "sequence " << s << " step " << step;
      in_batch.push_back(s);
      done[size_t(s)] += q;
    }
    if (in_batch.empty()) break;
    const auto r = batched.execute(b);
    for (size_t i = 0; i < in_batch.size(); ++i) {
      EXPECT_EQ(r.tokens[i], alone_tokens[i]);
      EXPECT_TRUE(same_bits(r.logits.data<float>() + int64_t(i) * V, alone_rows[i].data(), V))
          << "sequence " << in_batch[i] << " step " << step;
    }
    EXPECT_TRUE(pool_bytes(batched) == pool_bytes(alone)) << "step " << step;
  }
  for (int s = 0; s < 5; ++s) EXPECT_EQ(done[size_t(s)], n[s] + 3);
  // The pool holds exactly the caches' KV4 codes and FP16 params.
  const auto& lay = batched.layout();
  const int D = lay.head_dim, H = lay.num_kv_heads;
  int64_t bad = 0;
  for (int s = 0; s < 5; ++s)
    for (int l = 0; l < m->config().num_layers; ++l)
      for (int64_t pos = 0; pos < n[s] + 3; ++pos)
        for (int h = 0; h < H; ++h) {
          const size_t g = size_t(pos * H + h);
          const int32_t tok = int32_t(pos % lay.page_size);
          const KvCache& cache = caches[size_t(s)];
          for (int which = 0; which < 2; ++which) {
            const uint8_t* blk = (which ? batched.v_pool(l) : batched.k_pool(l)) +
                                 lay.block_offset(pages[size_t(s)][size_t(pos / lay.page_size)], h);
            const fmt4::Kv4Params prm = (which ? cache.v4_params(l) : cache.k4_params(l))[g];
            uint16_t sc, zr;
            std::memcpy(&sc, blk + lay.scale_offset(tok), 2);
            std::memcpy(&zr, blk + lay.zero_offset(tok), 2);
            bad += std::memcmp(blk + lay.data_offset(tok), (which ? cache.v4(l) : cache.k4(l)) + g * size_t(D / 2),
                               size_t(D / 2)) != 0 || sc != prm.scale || zr != prm.zero;
          }
        }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(Schemes, W4A8Kv4Executor,
                         ::testing::Values(quant::eval::RtnScheme::kW4A8PerChannel,
                                           quant::eval::RtnScheme::kW4A8G128));

// qs-llama-tiny, W4A8 g128 RTN, KV4: the 8 reference prompts prefilled in one batch and decoded greedily for 16
// tokens in batches of 8 equal each prompt prefilled and decoded by Model::forward on its own KV4 cache.
TEST(W4A8Kv4ExecutorRealModel, GreedyDecodeEqualsTheModelsOwnCache) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  QS_REQUIRE_DATA("fixtures/reference_generations.json");
  std::ifstream f(test::data_path("fixtures/reference_generations.json"));
  const auto j = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& c : j["cases"]) prompts.push_back(c["input_ids"].get<std::vector<int32_t>>());
  auto m = model::Model::load(test::data_path("models/qs-llama-tiny"));
  quant::eval::apply_rtn(*m, quant::eval::RtnScheme::kW4A8G128);
  const int64_t V = m->config().vocab_size;
  const int steps = 16;
  RefExecutor e(*m, kv4(16, 40));
  std::vector<std::vector<int32_t>> pages(prompts.size());
  for (size_t s = 0; s < prompts.size(); ++s)
    for (int p = 0; p < 3; ++p) pages[s].push_back(int32_t(39 - (s * 3 + size_t(p)) * 13 % 40));  // scrambled
  ForwardBatch pre;
  for (size_t s = 0; s < prompts.size(); ++s)
    pre.add_sequence(prompts[s].data(), int32_t(prompts[s].size()), 0, pages[s]);
  std::vector<std::vector<int32_t>> got(prompts.size());
  auto r = e.execute(pre);
  for (size_t s = 0; s < prompts.size(); ++s) got[s].push_back(r.tokens[s]);
  for (int step = 1; step < steps; ++step) {
    ForwardBatch d;
    for (size_t s = 0; s < prompts.size(); ++s)
      d.add_sequence(&got[s].back(), 1, int32_t(prompts[s].size()) + step - 1, pages[s]);
    r = e.execute(d);
    for (size_t s = 0; s < prompts.size(); ++s) got[s].push_back(r.tokens[s]);
  }
  for (size_t s = 0; s < prompts.size(); ++s) {
    KvCache cache = m->new_cache(model::KvMode::kKv4);
    Tensor lg = m->forward({{prompts[s].data(), int64_t(prompts[s].size()), &cache, true}}, LogitsMode::kLast);
    std::vector<int32_t> want{model::argmax(lg.data<float>(), V)};
    while (int(want.size()) < steps) {
      const int32_t id = want.back();
      lg = m->forward({{&id, 1, &cache}}, LogitsMode::kLast);
      want.push_back(model::argmax(lg.data<float>(), V));
    }
    EXPECT_EQ(got[s], want) << "prompt " << s;
  }
}

}  // namespace
}  // namespace qs
