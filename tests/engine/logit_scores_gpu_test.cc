// The GPU evaluation scores (kernels/eval/logit_scores.h) against the host functions ppl uses on the CPU
// (quant::eval::token_nll / kl_divergence / argmax): random logits rows of awkward vocabularies (1, 17, 1000, the
// model's 8192, 32001) and row strides, planted argmax ties (the first maximum wins on both sides), rows where
// the model and the reference agree and where they do not, a reference in a different buffer with its own stride,
// and non-finite values (counted per row). Tolerance: both sides sum in FP64 in a different order; the NLL and
// the log-sum-exps are O(10), so 1e-9 absolute (|x| * vocab * 2^-52 ~ 1e-11 for vocab 32001) is a loose, derived
// bound; KL is a difference of such terms, the same 1e-9. top-1 must be identical.
#include <gtest/gtest.h>

#include "common/test_util.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cmath>
#include <random>

#include "kernels/common/device_buffer.h"
#include "kernels/eval/logit_scores.h"
#include "quant/eval/perplexity.h"

namespace qs {
namespace {

struct Rows {
  int rows, vocab, ld;
  std::vector<float> x;  // [rows][ld]
};

Rows random_rows(int rows, int vocab, int ld, uint64_t seed, float scale) {
  Rows r{rows, vocab, ld, std::vector<float>(size_t(rows) * ld, std::nanf(""))};  // padding poisoned with NaN
  std::mt19937_64 g(seed);
  std::normal_distribution<float> n(0.0f, scale);
  for (int i = 0; i < rows; ++i)
    for (int v = 0; v < vocab; ++v) r.x[size_t(i) * ld + v] = n(g);
  return r;
}

void check_case(int rows, int vocab, int ld, int ref_ld, uint64_t seed) {
  SCOPED_TRACE("rows " + std::to_string(rows) + " vocab " + std::to_string(vocab) + " ld " + std::to_string(ld));
  Rows x = random_rows(rows, vocab, ld, seed, 3.0f);
  Rows y = random_rows(rows, vocab, ref_ld, seed + 1, 3.0f);
  std::mt19937_64 g(seed + 2);
  std::vector<int32_t> labels(static_cast<size_t>(rows));
  for (int i = 0; i < rows; ++i) {
    labels[size_t(i)] = int32_t(g() % uint64_t(vocab));
    float* xr = x.x.data() + size_t(i) * ld;
    float* yr = y.x.data() + size_t(i) * ref_ld;
    if (i % 3 == 0) {  // the reference is the model plus a small perturbation: mostly agreeing argmax, small KL
      for (int v = 0; v < vocab; ++v) yr[v] = xr[v] + 0.05f * float(int(g() % 21) - 10) / 10.0f;
    }
    if (i % 4 == 1 && vocab >= 3) {  // planted ties of the maximum: the first index must win on both sides
      const int a = int(g() % uint64_t(vocab)), b = int(g() % uint64_t(vocab));
      xr[a] = xr[b] = 40.0f;
      yr[std::min(a, b)] = yr[std::max(a, b)] = 40.0f;
    }
  }
  DeviceBuffer<float> dx(x.x), dy(y.x);
  DeviceBuffer<int32_t> dl(labels);
  DeviceBuffer<double> nll(static_cast<size_t>(rows)), kl(static_cast<size_t>(rows));
  DeviceBuffer<uint8_t> top(static_cast<size_t>(rows));
  DeviceBuffer<int32_t> bad(static_cast<size_t>(rows));
  nll.fill_bytes(0xFF);  // NaN poison: every row must be written
  kl.fill_bytes(0xFF);
  top.fill_bytes(0xFF);
  bad.fill_bytes(0xFF);
  kernels::LogitScoreParams p;
  p.logits = dx.get();
  p.ld = ld;
  p.ref_logits = dy.get();
  p.ref_ld = ref_ld;
  p.rows = rows;
  p.vocab = vocab;
  p.labels = dl.get();
  p.nll = nll.get();
  p.kl = kl.get();
  p.top1 = top.get();
  p.bad = bad.get();
  ASSERT_TRUE(kernels::score_logits(p, nullptr).is_ok());
  const auto hn = nll.download(), hk = kl.download();
  const auto ht = top.download();
  const auto hb = bad.download();
  int agree = 0;
  for (int i = 0; i < rows; ++i) {
    const float* xr = x.x.data() + size_t(i) * ld;
    const float* yr = y.x.data() + size_t(i) * ref_ld;
    const double want_nll = quant::eval::token_nll(xr, vocab, labels[size_t(i)]);
    const double want_kl = quant::eval::kl_divergence(yr, xr, vocab);
    const bool want_top = quant::eval::argmax(yr, vocab) == quant::eval::argmax(xr, vocab);
    EXPECT_NEAR(hn[size_t(i)], want_nll, 1e-9) << "row " << i;
    EXPECT_NEAR(hk[size_t(i)], want_kl, 1e-9) << "row " << i;
    EXPECT_EQ(ht[size_t(i)], uint8_t(want_top)) << "row " << i;
    EXPECT_EQ(hb[size_t(i)], 0) << "row " << i;
    agree += want_top;
  }
  if (rows >= 12 && vocab >= 17) {
    EXPECT_GT(agree, 0);  // both outcomes of top-1 are exercised
    EXPECT_LT(agree, rows);
  }

  // Without a reference only nll and bad are written (kl / top1 may be null).
  DeviceBuffer<double> nll2(static_cast<size_t>(rows));
  nll2.fill_bytes(0xFF);
  p.ref_logits = nullptr;
  p.kl = nullptr;
  p.top1 = nullptr;
  p.nll = nll2.get();
  ASSERT_TRUE(kernels::score_logits(p, nullptr).is_ok());
  const auto hn2 = nll2.download();
  for (int i = 0; i < rows; ++i) EXPECT_EQ(hn2[size_t(i)], hn[size_t(i)]) << "row " << i;
}

TEST(LogitScores, MatchHostFunctionsOnAwkwardShapes) {
  QS_REQUIRE_GPU();
  check_case(1, 1, 1, 1, 11);
  check_case(3, 17, 17, 33, 12);
  check_case(67, 1000, 1003, 1000, 13);
  check_case(257, 8192, 8192, 8192, 14);
  check_case(13, 32001, 32008, 32001, 15);
}

TEST(LogitScores, CountsNonFiniteValuesPerRow) {
  QS_REQUIRE_GPU();
  Rows x = random_rows(4, 300, 300, 21, 1.0f);
  Rows y = random_rows(4, 300, 300, 22, 1.0f);
  x.x[1 * 300 + 7] = std::nanf("");
  x.x[2 * 300 + 0] = INFINITY;
  y.x[2 * 300 + 299] = -INFINITY;
  y.x[3 * 300 + 5] = std::nanf("");
  DeviceBuffer<float> dx(x.x), dy(y.x);
  DeviceBuffer<int32_t> dl(std::vector<int32_t>{0, 1, 2, 3});
  DeviceBuffer<double> nll(4), kl(4);
  DeviceBuffer<uint8_t> top(4);
  DeviceBuffer<int32_t> bad(4);
  kernels::LogitScoreParams p;
  p.logits = dx.get();
  p.ref_logits = dy.get();
  p.rows = 4;
  p.vocab = 300;
  p.labels = dl.get();
  p.nll = nll.get();
  p.kl = kl.get();
  p.top1 = top.get();
  p.bad = bad.get();
  ASSERT_TRUE(kernels::score_logits(p, nullptr).is_ok());
  EXPECT_EQ(bad.download(), (std::vector<int32_t>{0, 1, 2, 1}));
}

TEST(LogitScores, BadParametersAreErrors) {
  QS_REQUIRE_GPU();
  kernels::LogitScoreParams p;
  p.rows = 2;
  p.vocab = 10;
  EXPECT_FALSE(kernels::score_logits(p, nullptr).is_ok());  // no pointers
  DeviceBuffer<float> x(20), y(20);
  DeviceBuffer<int32_t> l(2), b(2);
  DeviceBuffer<double> n(2);
  p.logits = x.get();
  p.labels = l.get();
  p.nll = n.get();
  p.bad = b.get();
  p.ld = 5;  // smaller than vocab
  EXPECT_FALSE(kernels::score_logits(p, nullptr).is_ok());
  p.ld = 10;
  p.ref_logits = y.get();  // a reference without kl / top1 outputs
  EXPECT_FALSE(kernels::score_logits(p, nullptr).is_ok());
}

}  // namespace
}  // namespace qs

#else
TEST(LogitScores, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif
