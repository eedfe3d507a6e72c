// GPU sampling (kernels/sampling) against the CPU sampler (model::Sampler::sample_at, model::argmax) on random
// logits: greedy rows must agree 100%, sampled rows >= 99.9% (sampling.h: the GPU's exact fixed-point mass sums
// differ from the CPU's FP64 sums by < 1e-9 relative, so a flip needs u within that of a boundary; in practice every
// row agrees). Per row: random temperature (incl. greedy), top_k (incl. 1, > vocab), top_p, seed and step; logits
// N(0, sd) with a few boosted tokens, half the rows rounded to 8 mantissa bits so ties are common. Vocab sizes
// 8192, 32000, 128256, 151936; rows 1..512; a row stride > vocab. Also: logprobs vs an FP64 log-softmax, determinism,
// bad-input errors. Lives in tests/model because the reference is model::Sampler (kernels may not include model/).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "common/test_util.h"
#include "kernels/attention_gpu_util.cuh"
#include "kernels/sampling/sampling.h"
#include "model/sampling.h"

namespace qs {
namespace {


struct Case {
  int rows, vocab;
  int64_t ld;
  std::vector<float> logits;
  std::vector<float> temp, top_p;
  std::vector<int32_t> top_k;
  std::vector<uint64_t> seed, step;
};

float round_mantissa8(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &b, 4);
  return x;
}

Case make_case(int rows, int vocab, int64_t ld, uint64_t seed) {
  Case c{rows, vocab, ld, {}, {}, {}, {}, {}, {}};
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  c.logits.assign(size_t(rows) * size_t(ld), 1e30f);  // padding past vocab must never be read
  const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.5f, 0.0f};
  const float tps[] = {1.0f, 1.0f, 0.95f, 0.9f, 0.5f, 0.1f};
  const int32_t tks[] = {0, 0, 1, 2, 20, 50, 1000, 1024, 3000, vocab, vocab + 3};
  for (int r = 0; r < rows; ++r) {
    const float sds[] = {0.05f, 1.0f, 2.0f, 4.0f};  // 0.05: nearly flat (huge nucleus, many ties)
    const float sd = sds[g() % 4];
    float* row = c.logits.data() + size_t(r) * size_t(ld);
    for (int i = 0; i < vocab; ++i) row[i] = sd * nd(g);
    for (int b = 0; b < 5; ++b) row[g() % uint64_t(vocab)] += 4.0f * sd;  // a peaked head, like real logits
    if (r % 2) for (int i = 0; i < vocab; ++i) row[i] = round_mantissa8(row[i]);
    c.temp.push_back(temps[g() % 6]);
    c.top_p.push_back(tps[g() % 6]);
    c.top_k.push_back(tks[g() % 11]);
    c.seed.push_back(g());
    c.step.push_back(g() % 1000);
  }
  return c;
}

struct GpuOut {
  std::vector<int32_t> tok;
  std::vector<float> logprob;
};

GpuOut run_gpu(const Case& c, bool greedy_only_nullptrs = false) {
  DeviceBuffer<float> l(c.logits), t(c.temp), tp(c.top_p), lp(size_t(c.rows));
  DeviceBuffer<int32_t> tk(c.top_k), out(size_t(c.rows));
  DeviceBuffer<uint64_t> sd(c.seed), st(c.step);
  out.fill_bytes(0xff);
  lp.fill_bytes(0xff);
  kernels::SampleParams p;
  p.logits = l.get();
  p.ld = c.ld;
  p.rows = c.rows;
  p.vocab = c.vocab;
  if (!greedy_only_nullptrs) {
    p.temperature = t.get();
    p.top_k = tk.get();
    p.top_p = tp.get();
    p.seed = sd.get();
    p.step = st.get();
  }
  p.out_token = out.get();
  p.out_logprob = lp.get();
  const Status s = kernels::sample(p, 0);
  EXPECT_TRUE(s.is_ok()) << s.message();
  return {out.download(), lp.download()};
}

class SamplingGpu : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(SamplingGpu, MatchesCpuSampler) {
  QS_REQUIRE_GPU();
  const auto [rows, vocab, pad] = GetParam();
  const Case c = make_case(rows, vocab, vocab + pad, uint64_t(rows) * 131 + uint64_t(vocab));
  const GpuOut g = run_gpu(c);
  int sampled = 0, mismatched = 0;
  for (int r = 0; r < rows; ++r) {
    const float* row = c.logits.data() + size_t(r) * size_t(c.ld);
    model::SamplingParams sp;
    sp.temperature = c.temp[size_t(r)];
    sp.top_k = c.top_k[size_t(r)];
    sp.top_p = c.top_p[size_t(r)];
    sp.seed = c.seed[size_t(r)];
    const int32_t want = model::Sampler(sp).sample_at(row, vocab, {}, c.step[size_t(r)]);
    const int32_t got = g.tok[size_t(r)];
    ASSERT_GE(got, 0) << "row " << r;
    ASSERT_LT(got, vocab) << "row " << r;
    if (sp.temperature <= 0.0f) {
      ASSERT_EQ(got, model::argmax(row, vocab)) << "greedy row " << r;
    } else {
      ++sampled;
      if (got != want) {
        ++mismatched;
        ADD_FAILURE() << "row " << r << ": gpu " << got << " (logit " << row[got] << ") cpu " << want << " (logit "
                      << row[want] << "), T " << sp.temperature << " k " << sp.top_k << " p " << sp.top_p;
      }
    }
    // Logprob of the chosen token under the raw logits, FP64 log-softmax; FP32 rounding of the result plus the
    // FP64 device exp/log (a few ulp) gives far below 1e-5.
    double mx = row[0];
    for (int i = 1; i < vocab; ++i) mx = std::max(mx, double(row[i]));
    double s = 0.0;
    for (int i = 0; i < vocab; ++i) s += std::exp(double(row[i]) - mx);
    const double lp = double(row[got]) - mx - std::log(s);
    EXPECT_NEAR(g.logprob[size_t(r)], lp, 1e-5 * std::max(1.0, std::fabs(lp))) << "row " << r;
  }
  // >= 99.9% agreement on sampled rows (ADD_FAILURE above already reports each flip; this is the written bound).
  EXPECT_LE(mismatched, sampled / 1000) << mismatched << " of " << sampled << " sampled rows differ";
}

INSTANTIATE_TEST_SUITE_P(Shapes, SamplingGpu,
                         ::testing::Values(std::tuple{1, 8192, 0}, std::tuple{512, 8192, 0}, std::tuple{67, 32000, 5},
                                           std::tuple{257, 32000, 0}, std::tuple{48, 128256, 0},
                                           std::tuple{1, 151936, 0}, std::tuple{40, 151936, 64},
                                           std::tuple{3, 17, 0}, std::tuple{17, 1, 0}));

TEST(SamplingGpuMisc, DeterministicAndGreedyDefaults) {
  QS_REQUIRE_GPU();
  const Case c = make_case(64, 32000, 32000, 7);
  const GpuOut a = run_gpu(c), b = run_gpu(c);
  EXPECT_EQ(a.tok, b.tok);
  const GpuOut greedy = run_gpu(c, /*greedy_only_nullptrs=*/true);
  for (int r = 0; r < c.rows; ++r)
    EXPECT_EQ(greedy.tok[size_t(r)], model::argmax(c.logits.data() + size_t(r) * 32000, 32000)) << "row " << r;
}

// Same logits, same seed, steps 0..N-1: the empirical distribution of the GPU draws equals the CPU's draw for
// draw (this is the "same seed, same tokens" contract over a whole generation).
TEST(SamplingGpuMisc, StepSequenceMatchesCpu) {
  QS_REQUIRE_GPU();
  const int n = 256, vocab = 1000;
  Case c = make_case(n, vocab, vocab, 11);
  for (int r = 1; r < n; ++r) std::copy(c.logits.begin(), c.logits.begin() + vocab, c.logits.begin() + r * vocab);
  for (int r = 0; r < n; ++r) c.temp[size_t(r)] = 1.0f, c.top_k[size_t(r)] = 0, c.top_p[size_t(r)] = 0.9f,
                              c.seed[size_t(r)] = 42, c.step[size_t(r)] = uint64_t(r);
  const GpuOut g = run_gpu(c);
  model::SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_p = 0.9f;
  sp.seed = 42;
  model::Sampler s(sp);
  std::set<int32_t> distinct;
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(g.tok[size_t(r)], s.sample(c.logits.data(), vocab, {})) << "step " << r;
    distinct.insert(g.tok[size_t(r)]);
  }
  EXPECT_GT(distinct.size(), 1u);  // it really samples
}

TEST(SamplingGpuMisc, BadInputIsReported) {
  QS_REQUIRE_GPU();
  kernels::SampleParams p;
  p.rows = 1;
  p.vocab = (1 << 20) + 1;
  p.logits = reinterpret_cast<const float*>(16);
  p.out_token = reinterpret_cast<int32_t*>(16);
  EXPECT_THAT(kernels::sample(p, 0).message(), ::testing::HasSubstr("vocab must be in"));
  p.vocab = 10;
  p.temperature = reinterpret_cast<const float*>(16);
  EXPECT_THAT(kernels::sample(p, 0).message(), ::testing::HasSubstr("seed and step are required"));
  p.temperature = nullptr;
  p.ld = 5;
  EXPECT_THAT(kernels::sample(p, 0).message(), ::testing::HasSubstr("ld is smaller"));
}

}  // namespace
}  // namespace qs
