// Tests of the quantized checkpoint (writer quant/checkpoint.h, reader model/checkpoint/quantized_checkpoint.h): bit-exact round trips of every variant with biases and
// FP16 tensors, metadata readable by a plain safetensors reader, atomic writes (no temporary files left, a
// failed write leaves no checkpoint), and clear errors for bad or foreign input.
#include "quant/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "common/test_util.h"
#include "core/error.h"

namespace qs::quant {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

using ::qs::test::error_of;
using model::CheckpointMeta;
using model::kCheckpointFormatVersion;
using model::QuantizedCheckpoint;
using model::StoredLinear;

Tensor random_tensor(Shape shape, uint64_t seed, float stddev = 0.05f) {
  const std::vector<float> v = test::random_normal(size_t(shape_numel(shape)), seed, stddev);
  return Tensor::from_floats(shape, v.data());
}

void expect_same(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << what;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qs_ckpt_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  CheckpointMeta meta(WeightFormat v) {
    CheckpointMeta m;
    m.variant = v;
    m.qoq = {{"rotation", true}, {"smooth_attention_alpha", 0.5}, {"gptq", {{"damp", 0.01}, {"block", 128}}}};
    m.source_model = "../shared/data/models/qs-llama-tiny";
    m.hf_config = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 256}, {"tie_word_embeddings", false}};
    return m;
  }
  fs::path dir_;
};

TEST_F(CheckpointTest, RoundTripG128WithBiasAndFp16Tensors) {
  const Tensor wq = random_tensor({67, 256}, 1), wk = random_tensor({3, 384}, 2);
  const W4G128Weight q = quantize_w4_g128(wq), kq = quantize_w4_g128(wk);
  const Tensor bias = random_tensor({67}, 3), emb = random_tensor({10, 256}, 4, 1.0f);
  QuantizedCheckpointWriter w(meta(WeightFormat::kW4A8G128));
  w.add_linear("model.layers.0.self_attn.q_proj", q, bias);
  w.add_linear("model.layers.0.self_attn.k_proj", kq);
  w.add_fp16("model.embed_tokens.weight", emb);
  w.write(dir_.string());
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << "left over: " << e.path();
  ASSERT_TRUE(fs::exists(dir_ / "config.json"));

  ASSERT_TRUE(QuantizedCheckpoint::is_quantized_checkpoint(dir_.string()));
  const QuantizedCheckpoint c = QuantizedCheckpoint::open(dir_.string());
  EXPECT_EQ(c.meta().variant, WeightFormat::kW4A8G128);
  EXPECT_EQ(c.meta().group_size, 128);
  EXPECT_EQ(c.meta().protective_range, kProtectiveRange);
  EXPECT_EQ(c.meta().kv_bits, 4);
  EXPECT_EQ(c.meta().qoq, meta(WeightFormat::kW4A8G128).qoq);
  EXPECT_EQ(c.meta().hf_config, meta(WeightFormat::kW4A8G128).hf_config);
  EXPECT_EQ(c.meta().source_model, "../shared/data/models/qs-llama-tiny");
  EXPECT_EQ(c.linear_names(), (std::vector<std::string>{"model.layers.0.self_attn.k_proj",
                                                       "model.layers.0.self_attn.q_proj"}));
  const StoredLinear l = c.linear("model.layers.0.self_attn.q_proj");
  EXPECT_EQ(l.n, 67);
  EXPECT_EQ(l.k, 256);
  expect_same(l.qweight, q.qweight, "qweight");
  expect_same(l.s1, q.s1, "s1");
  expect_same(l.s2, q.s2, "s2");
  expect_same(l.zn, q.zn, "zn");
  expect_same(dequantize(l), q.dequant, "dequant");
  ASSERT_TRUE(l.bias.defined());
  for (int64_t i = 0; i < 67; ++i) EXPECT_EQ(l.bias.data<uint16_t>()[i], float_to_fp16(bias.data<float>()[i]));
  EXPECT_FALSE(c.linear("model.layers.0.self_attn.k_proj").bias.defined());
  const Tensor e = c.tensor("model.embed_tokens.weight");
  ASSERT_EQ(e.dtype(), DType::F16);
  for (int64_t i = 0; i < e.numel(); ++i) ASSERT_EQ(e.data<uint16_t>()[i], float_to_fp16(emb.data<float>()[i]));

  // Any safetensors reader sees the metadata as one JSON string.
  const io::TensorStore s = io::TensorStore::open(dir_.string());
  const nlohmann::json j = nlohmann::json::parse(s.metadata().at("qserve"));
  EXPECT_EQ(j.at("format_version"), kCheckpointFormatVersion);
  EXPECT_EQ(j.at("variant"), "g128");
  EXPECT_EQ(j.at("weight_bits"), 4);
  EXPECT_EQ(j.at("linears").at("model.layers.0.self_attn.k_proj"), (std::vector<int64_t>{3, 384}));
}

TEST_F(CheckpointTest, RoundTripPerChannelAndW8a8) {
  const Tensor w = random_tensor({17, 130}, 5);
  {
    const W4PerChannelWeight q = quantize_w4_per_channel(w);
    QuantizedCheckpointWriter wr(meta(WeightFormat::kW4A8PerChannel));
    wr.add_linear("model.layers.3.mlp.down_proj", q);
    wr.write(dir_.string());
    const QuantizedCheckpoint c = QuantizedCheckpoint::open((dir_ / "model.safetensors").string());
    EXPECT_EQ(c.meta().group_size, 0);
    EXPECT_EQ(c.meta().protective_range, 0);
    const StoredLinear l = c.linear("model.layers.3.mlp.down_proj");
    expect_same(l.qweight, q.qweight, "qweight");
    expect_same(l.scale, q.scale, "scale");
    expect_same(l.szero, q.szero, "szero");
    expect_same(dequantize(l), q.dequant, "dequant");
  }
  {
    const Int8ChannelWeight q = quantize_int8_per_channel(w);
    CheckpointMeta m = meta(WeightFormat::kW8A8);
    m.kv_bits = 16;
    QuantizedCheckpointWriter wr(m);
    wr.add_linear("lin", q);
    wr.write(dir_.string());  // overwrites the previous checkpoint atomically
    const QuantizedCheckpoint c = QuantizedCheckpoint::open(dir_.string());
    EXPECT_EQ(c.meta().variant, WeightFormat::kW8A8);
    EXPECT_EQ(c.meta().kv_bits, 16);
    EXPECT_FALSE(c.has_linear("model.layers.3.mlp.down_proj"));
    expect_same(dequantize(c.linear("lin")), q.dequant, "dequant");
  }
}

TEST_F(CheckpointTest, WriterRejectsBadInput) {
  const W4G128Weight g = quantize_w4_g128(random_tensor({2, 128}, 6));
  QuantizedCheckpointWriter w(meta(WeightFormat::kW4A8PerChannel));
  EXPECT_THAT(error_of([&] { w.add_linear("a", g); }), HasSubstr("linear 'a' is g128 but the checkpoint is per-channel"));
  const W4PerChannelWeight p = quantize_w4_per_channel(random_tensor({2, 128}, 6));
  w.add_linear("a", p);
  EXPECT_THAT(error_of([&] { w.add_linear("a", p); }), HasSubstr("linear 'a' added twice"));
  EXPECT_THAT(error_of([&] { w.add_linear("b", p, random_tensor({3}, 1)); }), HasSubstr("does not match 2 outputs"));
  Tensor big = random_tensor({2}, 1);
  big.data<float>()[1] = 1e6f;
  EXPECT_THAT(error_of([&] { w.add_fp16("norm", big); }), HasSubstr("overflows FP16"));
  QuantizedCheckpointWriter g2(meta(WeightFormat::kW4A8G128));
  W4G128Weight g_other = g;
  g_other.protective_range = 100;
  EXPECT_THAT(error_of([&] { g2.add_linear("x", g_other); }), HasSubstr("protective range 100"));
  EXPECT_THAT(error_of([] { parse_weight_format("int3"); }), HasSubstr("unknown weight variant 'int3'"));

  // Unwritable destination: a path below a regular file. Nothing is written.
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "x";
  EXPECT_THAT(error_of([&] { w.write((dir_ / "file" / "out").string()); }), HasSubstr("cannot create output directory"));
}

TEST_F(CheckpointTest, ReaderRejectsForeignAndDamagedCheckpoints) {
  fs::create_directories(dir_);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("does not exist"));
  // A plain (FP) safetensors file is not a quantized checkpoint.
  io::SafetensorsWriter plain;
  plain.add("w", random_tensor({2, 2}, 1));
  plain.write((dir_ / "model.safetensors").string());
  EXPECT_FALSE(QuantizedCheckpoint::is_quantized_checkpoint(dir_.string()));
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }),
              HasSubstr("is not a qserve quantized checkpoint"));

  // Metadata from the future, and a linear whose tensors are missing or corrupt.
  const W4G128Weight g = quantize_w4_g128(random_tensor({2, 128}, 6));
  auto write_with = [&](const std::string& meta_json, bool corrupt_s2, bool drop_zn) {
    io::SafetensorsWriter w;
    w.add("l.qweight", g.qweight);
    w.add("l.s1", g.s1);
    Tensor s2 = g.s2.clone();
    if (corrupt_s2) s2.data<uint8_t>()[1] = 0;
    w.add("l.s2", s2);
    if (!drop_zn) w.add("l.zn", g.zn);
    w.set_metadata("qserve", meta_json);
    w.write((dir_ / "model.safetensors").string());
  };
  CheckpointMeta m = meta(WeightFormat::kW4A8G128);
  QuantizedCheckpointWriter ref(m);
  ref.add_linear("l", g);
  ref.write(dir_.string());
  const std::string good = QuantizedCheckpoint::open(dir_.string()).store().metadata().at("qserve");
  nlohmann::json future = nlohmann::json::parse(good);
  future["format_version"] = 99;
  write_with(future.dump(), false, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("unsupported format version 99"));
  nlohmann::json unsafe = nlohmann::json::parse(good);
  unsafe["protective_range"] = 127;
  write_with(unsafe.dump(), false, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("protective range 127"));
  write_with(good, true, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("linear 'l': group 1 has s2 = 0"));
  write_with(good, false, true);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("tensor 'l.zn' is missing"));
  // Issue 13: a field of the wrong type is named (with the file), not reported as a bare JSON type error.
  nlohmann::json typed = nlohmann::json::parse(good);
  typed["kv_bits"] = "4";
  write_with(typed.dump(), false, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }),
              AllOf(HasSubstr("metadata field 'kv_bits' must be an integer, got string"), HasSubstr("model.safetensors")));
  typed = nlohmann::json::parse(good);
  typed["linears"]["l"] = {2, "x"};
  write_with(typed.dump(), false, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("metadata linears['l'] must be [N, K]"));
  typed = nlohmann::json::parse(good);
  typed.erase("hf_config");
  write_with(typed.dump(), false, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("metadata field 'hf_config' is missing"));
  write_with("{not json", false, false);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("is not valid JSON"));
  // A truncated file (an interrupted copy) is rejected by the safetensors reader.
  write_with(good, false, false);
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") - 10);
  EXPECT_THAT(error_of([&] { QuantizedCheckpoint::open(dir_.string()); }), HasSubstr("model.safetensors"));
}

}  // namespace
}  // namespace qs::quant
