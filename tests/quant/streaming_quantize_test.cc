// Streaming QoQ (quant/qoq/streaming.h) against the whole-model path on qs-llama-tiny: the same checkpoint bit for
// bit (packed codes, scales, embeddings, norms, biases, reports, settings) for g128 (GPTQ, SmoothAttention search,
// reordering) and per-channel (clipping search); a run stopped after layer k and resumed equals an uninterrupted
// run; a resume state from other settings is refused (or discarded when asked); and the pre-work checks for shapes
// the kernels cannot take and for already-quantized tensors.
//
// Tolerance: none. Both paths run the same quantize_layer() on the same FP32 values (the per-layer rotations apply
// the whole-model ones tensor by tensor), so every result must be bit-identical.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "backends/cpu/cpu_backend.h"
#include "common/test_util.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "quant/qoq/streaming.h"
#include "tokenizer/tokenizer.h"

namespace qs::quant::qoq {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
constexpr const char* kModel = "models/qs-llama-tiny";
constexpr const char* kCalib = "text/calibration.txt";

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  return std::memcmp(a.raw(), b.raw(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

// Everything a checkpoint is made of, compared exactly.
void expect_same(const QoqResult& a, const FpTensors& fa, const QoqResult& b, const FpTensors& fb) {
  ASSERT_EQ(a.linears.size(), b.linears.size());
  for (const auto& [name, qa] : a.linears) {
    ASSERT_TRUE(b.linears.count(name)) << name;
    const auto& qb = b.linears.at(name);
    ASSERT_EQ(qa.index(), qb.index()) << name;
    if (const auto* ga = std::get_if<W4G128Weight>(&qa)) {
      const auto& gb = std::get<W4G128Weight>(qb);
      EXPECT_TRUE(same_bytes(ga->qweight, gb.qweight) && same_bytes(ga->s1, gb.s1) && same_bytes(ga->s2, gb.s2) &&
                  same_bytes(ga->zn, gb.zn))
          << name;
    } else {
      const auto& pa = std::get<W4PerChannelWeight>(qa);
      const auto& pb = std::get<W4PerChannelWeight>(qb);
      EXPECT_TRUE(same_bytes(pa.qweight, pb.qweight) && same_bytes(pa.scale, pb.scale) &&
                  same_bytes(pa.szero, pb.szero))
          << name;
    }
  }
  EXPECT_TRUE(same_bytes(fa.embed, fb.embed));
  EXPECT_TRUE(same_bytes(fa.lm_head, fb.lm_head));
  EXPECT_TRUE(same_bytes(fa.final_norm, fb.final_norm));
  ASSERT_EQ(fa.input_norm.size(), fb.input_norm.size());
  for (size_t i = 0; i < fa.input_norm.size(); ++i) {
    EXPECT_TRUE(same_bytes(fa.input_norm[i], fb.input_norm[i])) << i;
    EXPECT_TRUE(same_bytes(fa.post_norm[i], fb.post_norm[i])) << i;
  }
  ASSERT_EQ(fa.biases.size(), fb.biases.size());
  for (const auto& [n, t] : fa.biases) EXPECT_TRUE(same_bytes(t, fb.biases.at(n))) << n;
  EXPECT_EQ(a.settings, b.settings);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const auto &la = a.layers[i], &lb = b.layers[i];
    EXPECT_EQ(la.attn_alpha, lb.attn_alpha) << i;
    EXPECT_EQ(la.down_alpha, lb.down_alpha) << i;
    EXPECT_EQ(la.down_beta, lb.down_beta) << i;
    EXPECT_EQ(la.attn_err, lb.attn_err) << i;
    ASSERT_EQ(la.linears.size(), lb.linears.size());
    for (size_t j = 0; j < la.linears.size(); ++j) {
      EXPECT_EQ(la.linears[j].name, lb.linears[j].name);
      EXPECT_EQ(la.linears[j].rel_error, lb.linears[j].rel_error) << la.linears[j].name;
      EXPECT_EQ(la.linears[j].mean_clip, lb.linears[j].mean_clip) << la.linears[j].name;
    }
  }
}

class StreamingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    QS_REQUIRE_DATA(kModel);
    QS_REQUIRE_DATA(kCalib);
    dir_ = qs::test::data_path(kModel);
    tok_ = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::from_dir(dir_));
    calib_ = sample_calibration_file(*tok_, qs::test::data_path(kCalib), 3, 80, 0);
    tmp_ = fs::temp_directory_path() / ("qs_streaming_test_" + std::to_string(::getpid()));
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override {
    if (!tmp_.empty()) fs::remove_all(tmp_);
  }
  QoqOptions small(WeightFormat v) const {
    QoqOptions o;
    o.variant = v;
    o.sample_rows = 40;
    o.clip_steps = 12;
    o.smooth_attn_windows = 2;
    o.smooth_attn_queries = 24;
    o.windows_per_call = 2;
    o.progress = false;
    return o;
  }
  void expect_same_as_in_memory(const QoqOptions& opt) {
    auto model = model::Model::load(dir_, backends::cpu_backend());
    const QoqResult ref = run_qoq(*model, calib_, opt);
    const FpTensors ref_fp = fp_tensors_of(*model);
    const StreamingResult s = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, {});
    EXPECT_EQ(s.resumed_layers, 0);
    expect_same(ref, ref_fp, s.result, s.fp);
  }
  std::string dir_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  CalibrationSet calib_;
  fs::path tmp_;
};

TEST_F(StreamingTest, G128EqualsTheWholeModelPathBitForBit) { expect_same_as_in_memory(small(WeightFormat::kW4A8G128)); }

TEST_F(StreamingTest, PerChannelEqualsTheWholeModelPathBitForBit) {
  QoqOptions o = small(WeightFormat::kW4A8PerChannel);
  o.smooth_attn_search = false;  // the fixed-alpha branch, and FP propagation
  o.propagate_quantized = false;
  expect_same_as_in_memory(o);
}

TEST_F(StreamingTest, NoRotationEqualsTheWholeModelPath) {
  QoqOptions o = small(WeightFormat::kW4A8G128);
  o.rotate = false;  // tied lm_head stays the embeddings
  o.gptq = false;
  expect_same_as_in_memory(o);
}

TEST_F(StreamingTest, StoppedAndResumedEqualsUninterrupted) {
  const QoqOptions opt = small(WeightFormat::kW4A8G128);
  const StreamingResult full = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, {});
  StreamingOptions so;
  so.state_dir = (tmp_ / "state").string();
  so.stop_after_layers = 2;
  const std::string err =
      qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); });
  EXPECT_THAT(err, HasSubstr("stopped after layer 2"));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "state.json"));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "layer-1.safetensors"));
  EXPECT_FALSE(fs::exists(tmp_ / "state" / "layer-2.safetensors"));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "hidden-2.bin"));
  EXPECT_FALSE(fs::exists(tmp_ / "state" / "hidden-1.bin"));  // superseded boundary states are removed
  // Resume once more to the end of layer 3, then to the end: every restart continues where the last one stopped.
  so.stop_after_layers = 3;
  EXPECT_THAT(qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); }),
              HasSubstr("stopped after layer 3"));
  so.stop_after_layers = -1;
  const StreamingResult resumed = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so);
  EXPECT_EQ(resumed.resumed_layers, 3);
  expect_same(full.result, full.fp, resumed.result, resumed.fp);
}

TEST_F(StreamingTest, HiddenStatesSavedOnlyAtIntervalsAndAtTheStop) {
  const QoqOptions opt = small(WeightFormat::kW4A8PerChannel);
  StreamingOptions so;
  so.state_dir = (tmp_ / "state").string();
  so.save_every_seconds = 1e9;  // never by time: only at the stop hook and after the last layer
  so.stop_after_layers = 3;
  EXPECT_THAT(qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); }),
              HasSubstr("stopped after layer 3"));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(fs::exists(tmp_ / "state" / ("layer-" + std::to_string(i) + ".safetensors")));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "hidden-3.bin"));
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(fs::exists(tmp_ / "state" / ("hidden-" + std::to_string(i) + ".bin"))) << i;
  so.stop_after_layers = -1;
  const StreamingResult resumed = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so);
  EXPECT_EQ(resumed.resumed_layers, 3);
  const StreamingResult full = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, {});
  expect_same(full.result, full.fp, resumed.result, resumed.fp);
}

// Saves are written in the background and only the newest hidden state is kept: a stop at layer 1, a resume that
// stops at layer 3 (no save in between) leaves hidden-3.bin alone; after the last layer no hidden state is kept, and
// a finished state resumes with nothing left to run.
TEST_F(StreamingTest, OnlyTheNewestHiddenStateIsKeptAndNoneAfterTheLastLayer) {
  const QoqOptions opt = small(WeightFormat::kW4A8PerChannel);
  StreamingOptions so;
  so.state_dir = (tmp_ / "state").string();
  so.save_every_seconds = 1e9;
  so.stop_after_layers = 1;
  EXPECT_THAT(qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); }),
              HasSubstr("stopped after layer 1"));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "hidden-1.bin"));
  so.stop_after_layers = 3;
  EXPECT_THAT(qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); }),
              HasSubstr("stopped after layer 3"));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "hidden-3.bin"));
  EXPECT_FALSE(fs::exists(tmp_ / "state" / "hidden-1.bin"));
  so.stop_after_layers = -1;
  const StreamingResult resumed = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so);
  EXPECT_EQ(resumed.resumed_layers, 3);
  for (const auto& e : fs::directory_iterator(tmp_ / "state"))
    EXPECT_FALSE(e.path().filename().string().starts_with("hidden-")) << e.path();
  const StreamingResult finished = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so);
  EXPECT_EQ(finished.resumed_layers, 4);
  expect_same(resumed.result, resumed.fp, finished.result, finished.fp);
  const StreamingResult full = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, {});
  expect_same(full.result, full.fp, resumed.result, resumed.fp);
}

TEST_F(StreamingTest, StateFromOtherSettingsIsRefusedOrDiscarded) {
  QoqOptions opt = small(WeightFormat::kW4A8G128);
  StreamingOptions so;
  so.state_dir = (tmp_ / "state").string();
  so.stop_after_layers = 1;
  EXPECT_THAT(qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); }),
              HasSubstr("stopped after layer 1"));
  so.stop_after_layers = -1;
  opt.smooth_down_alpha = 0.2f, opt.smooth_down_beta = 0.8f;
  const std::string err =
      qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so); });
  EXPECT_THAT(err, HasSubstr("cannot be resumed"));
  EXPECT_THAT(err, HasSubstr("settings differ"));
  EXPECT_TRUE(fs::exists(tmp_ / "state" / "layer-0.safetensors"));  // refused: nothing removed
  // Other calibration windows: refused too.
  QoqOptions same = small(WeightFormat::kW4A8G128);
  const CalibrationSet other = sample_calibration_file(*tok_, qs::test::data_path(kCalib), 3, 80, 7);
  EXPECT_THAT(qs::test::error_of([&] { run_qoq_streaming(dir_, backends::cpu_backend(), other, same, so); }),
              HasSubstr("calibration differ"));
  so.fresh = true;
  const StreamingResult r = run_qoq_streaming(dir_, backends::cpu_backend(), calib_, opt, so);
  EXPECT_EQ(r.resumed_layers, 0);
  EXPECT_EQ(r.result.linears.size(), 28u);
}

TEST(StreamingChecks, ShapesTheKernelsCannotTakeAreRefusedBeforeWork) {
  io::ModelConfig c;
  c.hidden_size = 512, c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 128, c.intermediate_size = 1536;
  c.num_layers = 2, c.vocab_size = 1000;
  QoqOptions o;
  EXPECT_NO_THROW(check_quantizable(c, o));
  io::ModelConfig bad = c;
  bad.hidden_size = 520;
  EXPECT_THAT(qs::test::error_of([&] { check_quantizable(bad, o); }), HasSubstr("hidden_size = 520"));
  bad = c;
  bad.intermediate_size = 1000;
  EXPECT_THAT(qs::test::error_of([&] { check_quantizable(bad, o); }), HasSubstr("intermediate_size = 1000"));
  bad = c;
  bad.head_dim = 96, bad.num_heads = 4, bad.num_kv_heads = 1;  // q_size 384 = 3 x 128 fine, kv 96 fine
  EXPECT_NO_THROW(check_quantizable(bad, o));
  bad.num_heads = 5;  // q_size 480
  EXPECT_THAT(qs::test::error_of([&] { check_quantizable(bad, o); }), HasSubstr("num_attention_heads x head_dim"));
  bad = c;
  bad.head_dim = 8, bad.num_heads = 64, bad.num_kv_heads = 1;  // kv_size 8
  EXPECT_THAT(qs::test::error_of([&] { check_quantizable(bad, o); }), HasSubstr("num_key_value_heads x head_dim"));
}

TEST_F(StreamingTest, QuantizedTensorsAreRefusedBeforeWork) {
  // A copy of the tiny model's config with one quantized-looking tensor in its safetensors.
  const fs::path d = tmp_ / "q";
  fs::create_directories(d);
  fs::copy_file(fs::path(dir_) / "config.json", d / "config.json");
  io::SafetensorsWriter w;
  Tensor t(DType::U8, {4, 4});
  std::memset(t.data<uint8_t>(), 1, 16);
  w.add("model.layers.0.self_attn.q_proj.qweight", t);
  w.write((d / "model.safetensors").string());
  const std::string err = qs::test::error_of(
      [&] { run_qoq_streaming(d.string(), backends::cpu_backend(), calib_, small(WeightFormat::kW4A8G128), {}); });
  EXPECT_THAT(err, HasSubstr("holds quantized tensors"));
}

}  // namespace
}  // namespace qs::quant::qoq
