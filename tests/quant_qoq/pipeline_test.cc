// The QoQ pipeline end to end on qs-llama-tiny with a small calibration set: the transformed FP model still
// computes the same function with real calibration statistics (<= 1e-5, TESTING.md), the single-pass capture
// re-expressed for smoothed/reordered weights equals a fresh capture of the transformed layer, GPTQ beats RTN on
// the calibration rows, and the written checkpoint reads back bit-exactly, loads and runs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <random>

#include "common/test_util.h"
#include "model/checkpoint/load.h"
#include "quant/qoq/model_view.h"
#include "quant/qoq/pipeline.h"

namespace qs::quant::qoq {
namespace {

using ::testing::HasSubstr;
constexpr const char* kModel = "models/qs-llama-tiny";
constexpr const char* kCalib = "text/calibration.txt";

std::vector<float> logits_of(model::Model& m, const std::vector<int32_t>& ids) {
  auto cache = m.new_cache();
  Tensor t = m.forward({{ids.data(), int64_t(ids.size()), &cache}}, model::LogitsMode::kAll);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

std::vector<int32_t> prompt(const model::Model& m) {
  std::mt19937_64 rng(5);
  std::vector<int32_t> ids(45);
  for (auto& t : ids) t = int32_t(rng() % uint64_t(m.config().vocab_size));
  return ids;
}

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!qs::test::data_available(kModel) || !qs::test::data_available(kCalib))
      GTEST_SKIP() << "test data not found under " << qs::test::data_path("");
    model_ = model::Model::load(qs::test::data_path(kModel));
    tok_ = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel)));
    calib_ = sample_calibration_file(*tok_, qs::test::data_path(kCalib), 4, 96, 0);
  }
  QoqOptions small(WeightFormat v) const {
    QoqOptions o;
    o.variant = v;
    o.sample_rows = 48;
    o.clip_steps = 16;
    o.progress = false;
    return o;
  }
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  CalibrationSet calib_;
};

TEST_F(PipelineTest, CaptureReexpressedForTransformedWeightsEqualsRecapture) {
  const auto& c = model_->config();
  LayerRunner runner(*model_, calib_, 2);
  CaptureOptions co;
  co.hessians = true;
  co.keep_rows = 16;
  LayerCapture cap = runner.run(1, co, false);
  LayerInputs in = take_inputs(cap);
  // Transform layer 1: smoothing + reordering with the captured statistics.
  ModelWeights w = weights_view(*model_);
  auto& l = w.layers[1];
  const auto s = smooth_down_scales(cap.absmax[3], *l.down, 0.3f, 0.7f);
  apply_smooth_down(l, s);
  std::vector<float> stat(s.size()), inv(s.size());
  for (size_t j = 0; j < s.size(); ++j) stat[j] = cap.absmax[3][j] / s[j], inv[j] = 1.0f / s[j];
  const auto perm = ascending_order(stat.data(), int64_t(stat.size()));
  reorder_down(l, perm);
  std::vector<std::vector<int32_t>> perms;
  std::vector<int32_t> o_perm(size_t(c.q_size()));
  for (int g = 0; g < c.num_kv_heads; ++g) {
    perms.push_back(ascending_order(cap.absmax[1].data() + g * c.head_dim * c.gqa_ratio(), c.head_dim));
    for (int h = g * c.gqa_ratio(); h < (g + 1) * c.gqa_ratio(); ++h)
      for (int j = 0; j < c.head_dim; ++j) o_perm[size_t(h * c.head_dim + j)] = h * c.head_dim + perms.back()[size_t(j)];
  }
  reorder_value_heads(l, c, perms);
  permute_scale_input(in, LinearInput::kDown, perm, inv);
  permute_scale_input(in, LinearInput::kO, o_perm, {});
  LayerCapture again = runner.run(1, co, false);
  LayerInputs fresh = take_inputs(again);
  for (int i : {1, 3}) {
    const auto& a = in.hessian[i];
    const auto& b = fresh.hessian[i];
    ASSERT_EQ(a.size(), b.size());
    double num = 0, den = 0;
    for (size_t t = 0; t < a.size(); ++t) num += (a[t] - b[t]) * (a[t] - b[t]), den += b[t] * b[t];
    EXPECT_LE(std::sqrt(num / den), 1e-5) << linear_input_name(LinearInput(i));
    EXPECT_LE(qs::test::normalized_error(in.rows[i].data<float>(), fresh.rows[i].data<float>(), in.rows[i].numel()), 1e-5);
  }
  // Negative control: the unpermuted capture does not match.
  LayerCapture orig = runner.run(0, co, false);
  EXPECT_GT(qs::test::normalized_error(take_inputs(orig).rows[3].data<float>(), fresh.rows[3].data<float>(), fresh.rows[3].numel()), 0.1);
}

TEST_F(PipelineTest, FullQoqKeepsTheFunctionAndGptqBeatsRtn) {
  for (WeightFormat v : {WeightFormat::kW4A8G128, WeightFormat::kW4A8PerChannel}) {
    auto m = model::Model::load(qs::test::data_path(kModel));
    const auto ids = prompt(*m);
    const auto ref = logits_of(*m, ids);
    QoqResult full = run_qoq(*m, calib_, small(v));
    // The transformed FP model (real statistics: rotation, SmoothAttention, smoothing, reordering) is unchanged.
    EXPECT_LE(qs::test::normalized_error(logits_of(*m, ids), ref), 1e-5) << weight_format_name(v);
    ASSERT_EQ(full.linears.size(), 28u);
    ASSERT_EQ(full.layers.size(), 4u);
    // Same transformations, round to nearest: GPTQ must have the lower error on the calibration rows.
    auto m2 = model::Model::load(qs::test::data_path(kModel));
    QoqOptions no_gptq = small(v);
    no_gptq.gptq = false;
    QoqResult rtn = run_qoq(*m2, calib_, no_gptq);
    double e_full = 0, e_rtn = 0;
    for (size_t l = 0; l < 4; ++l)
      for (size_t j = 0; j < 7; ++j) {
        const double a = full.layers[l].linears[j].rel_error, b = rtn.layers[l].linears[j].rel_error;
        EXPECT_TRUE(std::isfinite(a) && a > 0 && a < 0.5) << full.layers[l].linears[j].name << " " << a;
        e_full += a;
        e_rtn += b;
      }
    EXPECT_LT(e_full, 0.9 * e_rtn) << weight_format_name(v);
    const std::string report = format_report(full);
    EXPECT_THAT(report, HasSubstr("model.layers.3.mlp.down_proj"));
  }
}

TEST_F(PipelineTest, QuantizedPropagationChangesLaterLayersOnly) {
  QoqOptions o = small(WeightFormat::kW4A8G128);
  o.gptq = false;  // RTN: layer 0's result cannot depend on the propagation mode, later layers' inputs do
  auto m2 = model::Model::load(qs::test::data_path(kModel));
  const auto ids = prompt(*m2);
  const auto ref = logits_of(*m2, ids);
  o.propagate_quantized = false;
  QoqResult fp = run_qoq(*model_, calib_, o);
  EXPECT_EQ(fp.settings["propagation"], "fp");
  o.propagate_quantized = true;
  QoqResult qp = run_qoq(*m2, calib_, o);
  EXPECT_EQ(qp.settings["propagation"], "quantized");
  // FP weights are restored after each propagation pass: the transformed model is still the same function.
  EXPECT_LE(qs::test::normalized_error(logits_of(*m2, ids), ref), 1e-5);
  const auto& a0 = std::get<W4G128Weight>(fp.linears.at("model.layers.0.mlp.down_proj")).dequant;
  const auto& b0 = std::get<W4G128Weight>(qp.linears.at("model.layers.0.mlp.down_proj")).dequant;
  EXPECT_EQ(std::memcmp(a0.raw(), b0.raw(), a0.nbytes()), 0);
  // Layer 2's statistics (smoothing, reordering) come from different inputs, so its weights differ.
  const auto& a2 = std::get<W4G128Weight>(fp.linears.at("model.layers.2.mlp.down_proj")).dequant;
  const auto& b2 = std::get<W4G128Weight>(qp.linears.at("model.layers.2.mlp.down_proj")).dequant;
  EXPECT_NE(std::memcmp(a2.raw(), b2.raw(), a2.nbytes()), 0);
}

TEST_F(PipelineTest, SmoothDownSearchPicksFromTheGrid) {
  QoqOptions o = small(WeightFormat::kW4A8G128);
  o.smooth_down_search = true;
  o.gptq = false;
  QoqResult r = run_qoq(*model_, calib_, o);
  for (const auto& l : r.layers) {
    EXPECT_GE(l.down_alpha, 0.0f);
    EXPECT_LE(l.down_alpha, 0.5f + 1e-6f);
    EXPECT_TRUE(l.down_beta == 0.0f || (l.down_beta >= 0.5f - 1e-6f && l.down_beta <= 1.0f + 1e-6f));
  }
  EXPECT_TRUE(r.settings["smooth_down_search"].get<bool>());
}

TEST_F(PipelineTest, CheckpointRoundTripsAndRuns) {
  QoqResult r = run_qoq(*model_, calib_, small(WeightFormat::kW4A8G128));
  nlohmann::json hf = {{"architectures", {"LlamaForCausalLM"}}};
  std::ifstream f(qs::test::data_path(kModel) + "/config.json");
  f >> hf;
  const auto dir = std::filesystem::temp_directory_path() / ("qoq_pipeline_test_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  make_checkpoint(*model_, r, hf, qs::test::data_path(kModel)).write(dir.string());
  const auto ck = model::QuantizedCheckpoint::open(dir.string());
  EXPECT_EQ(ck.meta().variant, WeightFormat::kW4A8G128);
  EXPECT_TRUE(ck.meta().qoq["rotate"].get<bool>());
  EXPECT_FALSE(ck.meta().hf_config["tie_word_embeddings"].get<bool>());
  for (const auto& [name, q] : r.linears) {
    const Tensor stored = dequantize(ck.linear(name));
    const Tensor& mine = std::get<W4G128Weight>(q).dequant;
    ASSERT_EQ(stored.numel(), mine.numel());
    EXPECT_EQ(std::memcmp(stored.raw(), mine.raw(), mine.nbytes()), 0) << name;
  }
  // The quantized model loads through the evaluation loader and stays close to the FP model (W4A8KV4 on a
  // 4-layer model: a relative logit error of a few tenths at most).
  auto fp = model::Model::load(qs::test::data_path(kModel));
  const auto ids = prompt(*fp);
  auto q = model::load_checkpoint(dir.string(), {});
  ASSERT_TRUE(q.quantized);
  const auto ql = logits_of(*q.model, ids);
  const double err = qs::test::normalized_error(ql, logits_of(*fp, ids));
  EXPECT_LT(err, 0.5);
  std::printf("quantized vs FP logits: normalized error %.4f\n", err);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qs::quant::qoq
