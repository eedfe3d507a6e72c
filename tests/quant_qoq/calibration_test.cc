// Calibration: window sampling is deterministic, disjoint and in range, too-short text fails clearly; the
// layer-by-layer runner observes exactly what a full forward pass sees (per-channel max|X| of each linear input,
// post-RoPE key maxima read from the KV cache, Hessians), bit for bit, since batched == one by one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "common/test_util.h"
#include "quant/qoq/calibration.h"

namespace qs::quant::qoq {
namespace {

using ::testing::HasSubstr;
constexpr const char* kModel = "models/qs-llama-tiny";

std::string some_text() {
  std::string t;
  for (int i = 0; i < 400; ++i) t += "The quick brown fox " + std::to_string(i * 7919 % 1000) + " jumps over the lazy dog. ";
  return t;
}

TEST(Calibration, SamplingIsDeterministicDisjointAndInRange) {
  QS_REQUIRE_DATA(kModel);
  const auto tok = tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel));
  const std::string text = some_text();
  const std::vector<int> ids = tok.encode(text, false);
  const auto a = sample_calibration(tok, text, 5, 37, 3);
  const auto b = sample_calibration(tok, text, 5, 37, 3);
  const auto c = sample_calibration(tok, text, 5, 37, 4);
  ASSERT_EQ(a.windows.size(), 5u);
  EXPECT_EQ(a.text_tokens, int64_t(ids.size()));
  EXPECT_EQ(a.windows, b.windows);
  EXPECT_NE(a.windows, c.windows);
  // Each window is an aligned slice of the token stream, all different.
  std::set<int64_t> starts;
  for (const auto& w : a.windows) {
    ASSERT_EQ(w.size(), 37u);
    bool found = false;
    for (int64_t s = 0; s + 37 <= int64_t(ids.size()) && !found; s += 37)
      if (std::equal(w.begin(), w.end(), ids.begin() + s)) found = starts.insert(s).second;
    EXPECT_TRUE(found);
  }
  EXPECT_EQ(starts.size(), 5u);
}

TEST(Calibration, TooShortTextFails) {
  QS_REQUIRE_DATA(kModel);
  const auto tok = tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel));
  try {
    sample_calibration(tok, "just a few words of text", 128, 1024);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("calibration text too short"));
    EXPECT_THAT(e.what(), HasSubstr("--calib-samples 128 --calib-len 1024"));
  }
  EXPECT_THROW(sample_calibration_file(tok, "/nonexistent/calib.txt", 1, 8), Error);
}

TEST(Calibration, LayerRunnerMatchesFullForward) {
  QS_REQUIRE_DATA(kModel);
  auto model = model::Model::load(qs::test::data_path(kModel));
  const auto tok = tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel));
  const auto set = sample_calibration(tok, some_text(), 3, 41, 1);
  const auto& cfg = model->config();
  const int layer = 2;

  // Reference: full forward passes, one window at a time, observing layer 2.
  std::vector<float> ref_max[kNumLinearInputs];
  HessianAccumulator ref_h(cfg.intermediate_size);
  std::vector<float> ref_keys(size_t(cfg.kv_size()), 0.0f);
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  const char* names[] = {"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"};
  model->set_observer([&](const std::string& n, const float* x, int64_t m, int64_t k) {
    for (int i = 0; i < kNumLinearInputs; ++i)
      if (n == prefix + names[i]) {
        auto& mx = ref_max[i];
        if (mx.empty()) mx.assign(size_t(k), 0.0f);
        for (int64_t t = 0; t < m * k; ++t) mx[size_t(t % k)] = std::max(mx[size_t(t % k)], std::fabs(x[t]));
        if (i == 3) ref_h.add(x, m);
      }
  });
  for (const auto& w : set.windows) {
    auto cache = model->new_cache();
    model->forward({{w.data(), int64_t(w.size()), &cache}}, model::LogitsMode::kNone);
    for (int64_t t = 0; t < int64_t(w.size()) * cfg.kv_size(); ++t)
      ref_keys[size_t(t % cfg.kv_size())] = std::max(ref_keys[size_t(t % cfg.kv_size())], std::fabs(cache.k(layer)[t]));
  }
  model->set_observer({});

  LayerRunner runner(*model, set, /*windows_per_call=*/2);
  CaptureOptions opt;
  opt.hessians = true;
  opt.keep_rows = 5;
  for (int l = 0; l < layer; ++l) runner.run(l, {.absmax = false, .keys = false}, /*advance=*/true);
  const std::vector<float> before = runner.hidden();
  const LayerCapture cap = runner.run(layer, opt, /*advance=*/false);
  EXPECT_EQ(runner.hidden(), before);  // advance = false leaves the hidden states alone
  for (int i = 0; i < kNumLinearInputs; ++i) {
    EXPECT_EQ(cap.absmax[i], ref_max[i]) << linear_input_name(LinearInput(i));
    EXPECT_GT(*std::max_element(cap.absmax[i].begin(), cap.absmax[i].end()), 0.0f);
  }
  EXPECT_EQ(cap.key_max, ref_keys);
  EXPECT_EQ(cap.hessian[3]->tokens(), 3 * 41);
  // HessianAccumulator sums FP32 tiles of <= 256 tokens (quant/gptq.cc: relative error < ~2e-5), and the runner
  // feeds it 82-row calls where the reference fed 41: equal up to that rounding, not bit for bit.
  {
    const auto a = cap.hessian[3]->hessian(), b = ref_h.hessian();
    ASSERT_EQ(a.size(), b.size());
    double num = 0, den = 0;
    for (size_t t = 0; t < a.size(); ++t) num += (a[t] - b[t]) * (a[t] - b[t]), den += b[t] * b[t];
    EXPECT_LE(std::sqrt(num / den), 2e-5);
  }
  ASSERT_EQ(cap.rows[1].dim(0), 5);
  EXPECT_EQ(cap.rows[1].dim(1), cfg.q_size());
  // Kept row i is token i * 123 / 5 of the stream: window 0 tokens 0 and 24, window 1 tokens 8 and 32, ...
  // Its o_proj input is nonzero, and within the observed maxima.
  for (int64_t j = 0; j < cfg.q_size(); ++j) EXPECT_LE(std::fabs(cap.rows[1].data<float>()[3 * cfg.q_size() + j]), cap.absmax[1][size_t(j)]);
  EXPECT_EQ(cap.hessian[0]->k(), cfg.hidden_size);
}

}  // namespace
}  // namespace qs::quant::qoq
