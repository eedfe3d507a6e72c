// Sampling tests: greedy/argmax ties, seeded determinism, top-k / top-p supports, temperature and empirical
// frequencies against the exact softmax (20,000 draws: each frequency within 5 standard deviations,
// sqrt(p(1-p)/N) <= 0.0036, so a correct sampler fails with probability < 1e-5), repetition penalty, bad params.
#include "model/sampling.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"

namespace qs::model {
namespace {

using ::testing::HasSubstr;

std::map<int32_t, double> frequencies(const SamplingParams& p, const std::vector<float>& logits, int n) {
  Sampler s(p);
  std::map<int32_t, double> f;
  for (int i = 0; i < n; ++i) f[s.sample(logits.data(), int64_t(logits.size()), {})] += 1.0 / n;
  return f;
}

void expect_freq(const std::map<int32_t, double>& f, int32_t id, double p, int n) {
  const double got = f.count(id) ? f.at(id) : 0.0;
  EXPECT_NEAR(got, p, 5 * std::sqrt(p * (1 - p) / n) + 1e-12) << "token " << id;
}

TEST(Sampling, GreedyIsArgmaxWithLowestIdOnTies) {
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
  EXPECT_EQ(argmax(l.data(), 5), 1);
  Sampler s(SamplingParams{});
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(l.data(), 5, {}), 1);
  SamplingParams k1;
  k1.temperature = 5.0f;
  k1.top_k = 1;
  Sampler s1(k1);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s1.sample(l.data(), 5, {}), 1) << "top_k=1 must be greedy";
}

TEST(Sampling, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> l(97);
  for (size_t i = 0; i < l.size(); ++i) l[i] = float(std::sin(double(i) * 1.7));
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  Sampler a(p), b(p);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 200; ++i) {
    ta.push_back(a.sample(l.data(), 97, {}));
    tb.push_back(b.sample(l.data(), 97, {}));
    tc.push_back(c.sample(l.data(), 97, {}));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampling, TemperatureFrequenciesMatchSoftmax) {
  const std::vector<float> l = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f};
  const int n = 20000;
  for (float t : {0.7f, 1.0f, 2.5f}) {
    SamplingParams p;
    p.temperature = t;
    p.seed = 7;
    auto f = frequencies(p, l, n);
    double z = 0;
    for (float v : l) z += std::exp(v / t);
    for (int i = 0; i < 5; ++i) expect_freq(f, i, std::exp(l[size_t(i)] / t) / z, n);
  }
}

TEST(Sampling, TopKKeepsOnlyTheKLargest) {
  const std::vector<float> l = {0.1f, 3.0f, 2.0f, -1.0f, 2.5f, 0.0f};
  const int n = 20000;
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 3;
  p.seed = 9;
  auto f = frequencies(p, l, n);
  const double z = std::exp(3.0) + std::exp(2.0) + std::exp(2.5);
  expect_freq(f, 1, std::exp(3.0) / z, n);
  expect_freq(f, 4, std::exp(2.5) / z, n);
  expect_freq(f, 2, std::exp(2.0) / z, n);
  EXPECT_EQ(f.size(), 3u);
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (in shuffled order): top_p 0.75 keeps {0.5, 0.3}.
  const std::vector<float> l = {float(std::log(0.15)), float(std::log(0.5)), float(std::log(0.05)),
                                float(std::log(0.3))};
  const int n = 20000;
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.75f;
  p.seed = 11;
  auto f = frequencies(p, l, n);
  EXPECT_EQ(f.size(), 2u);
  expect_freq(f, 1, 0.5 / 0.8, n);
  expect_freq(f, 3, 0.3 / 0.8, n);
  // top_p small: only the most likely token.
  p.top_p = 0.1f;
  auto g = frequencies(p, l, 100);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g.begin()->first, 1);
}

TEST(Sampling, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  const std::vector<float> l = {3.0f, 2.0f, -0.5f, -0.6f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  EXPECT_EQ(s.sample(l.data(), 4, {}), 0);
  EXPECT_EQ(s.sample(l.data(), 4, {0, 0}), 1);  // 3.0 / 2 = 1.5 < 2.0
  const std::vector<float> neg = {-1.0f, -1.5f};
  EXPECT_EQ(s.sample(neg.data(), 2, {0}), 1);    // -1.0 * 2 = -2.0 < -1.5
  SamplingParams off;
  Sampler o(off);
  EXPECT_EQ(o.sample(l.data(), 4, {0, 0}), 0) << "penalty is off by default";
}

TEST(Sampling, BadParametersAreRejected) {
  auto err = [](SamplingParams p) {
    try {
      Sampler s(p);
    } catch (const qs::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  SamplingParams p;
  p.top_k = -1;
  EXPECT_THAT(err(p), HasSubstr("top_k must be >= 0, got -1"));
  p = {};
  p.top_p = 0.0f;
  EXPECT_THAT(err(p), HasSubstr("top_p must be in (0, 1]"));
  p.top_p = 1.5f;
  EXPECT_THAT(err(p), HasSubstr("top_p must be in (0, 1], got 1.5"));
  p = {};
  p.repetition_penalty = 0.0f;
  EXPECT_THAT(err(p), HasSubstr("repetition_penalty must be a finite number > 0"));
  p.repetition_penalty = INFINITY;
  EXPECT_THAT(err(p), HasSubstr("repetition_penalty must be a finite number > 0"));
  // Issue 13: a negative temperature used to mean greedy silently; NaN / inf temperatures are not numbers to use.
  p = {};
  p.temperature = -0.5f;
  EXPECT_THAT(err(p), HasSubstr("temperature must be a finite number >= 0"));
  p.temperature = NAN;
  EXPECT_THAT(err(p), HasSubstr("temperature must be a finite number >= 0"));
  p.temperature = INFINITY;
  EXPECT_THAT(err(p), HasSubstr("temperature must be a finite number >= 0"));
  p.temperature = 0.0f;
  EXPECT_EQ(err(p), "(no error)");
}

TEST(Sampling, CounterBasedDrawIsStatelessAndSpread) {
  // sample_at(step) is what the n-th sample() call returns, so any executor reproduces a request's tokens from
  // (seed, step) alone, whatever the batching.
  std::vector<float> l(64);
  for (size_t i = 0; i < l.size(); ++i) l[i] = float(std::sin(double(i) * 1.7));
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1234;
  Sampler a(p);
  int differ = 0;
  for (uint64_t step = 0; step < 200; ++step) {
    const int32_t t = a.sample(l.data(), 64, {});
    EXPECT_EQ(t, Sampler(p).sample_at(l.data(), 64, {}, step)) << "step " << step;
    if (t != Sampler(p).sample_at(l.data(), 64, {}, step + 1)) ++differ;
  }
  EXPECT_GT(differ, 100) << "consecutive steps must draw independently";
  // Uniform draws: in [0, 1), mean ~0.5 over 100k steps (std of the mean 0.0009), seeds decorrelated.
  double sum = 0;
  int equal = 0;
  for (uint64_t i = 0; i < 100000; ++i) {
    const double u = sample_uniform(7, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    if (u == sample_uniform(8, i)) ++equal;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
  EXPECT_EQ(equal, 0);
}

}  // namespace
}  // namespace qs::model
