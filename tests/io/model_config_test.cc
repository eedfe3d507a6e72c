// config.json parsing: the fixture model (transformers-5 layout), every paper config (transformers-4
// layout), RoPE scaling, and clear errors for what we cannot honour.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/test_util.h"
#include "core/error.h"
#include "io/model_config.h"

namespace qs::io {
namespace {
using ::testing::HasSubstr;
using json = nlohmann::json;

std::string error_of(const json& j) {
  try {
    parse_model_config(j);
  } catch (const qs::Error& e) {
    return e.what();
  }
  return "(no error)";
}

json base() {
  return json::parse(R"({"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":512,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rms_norm_eps":1e-6,
    "bos_token_id":1,"eos_token_id":[2,3]})");
}

TEST(ModelConfig, TinyModelTransformers5Layout) {
  QS_REQUIRE_DATA("models/qs-llama-tiny/config.json");
  ModelConfig c = load_model_config(test::data_path("models/qs-llama-tiny"));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);  // from rope_parameters
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_ids, std::vector<int>{0});
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{1});
  EXPECT_EQ(c.gqa_ratio(), 2);
}

TEST(ModelConfig, EveryPaperConfigParses) {
  QS_REQUIRE_DATA("configs");
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(test::data_path("configs"))) {
    SCOPED_TRACE(e.path().string());
    ModelConfig c = load_model_config(e.path().string());
    EXPECT_GT(c.hidden_size, 0);
    EXPECT_EQ(c.num_heads % c.num_kv_heads, 0);
    EXPECT_EQ(c.head_dim, 128);
    ++n;
  }
  EXPECT_EQ(n, 10);
  ModelConfig l31 = load_model_config(test::data_path("configs/llama-3.1-8b.json"));
  EXPECT_EQ(l31.rope_scaling.type, "llama3");
  EXPECT_EQ(l31.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  ModelConfig mis = load_model_config(test::data_path("configs/mistral-7b.json"));
  EXPECT_EQ(mis.sliding_window, 4096);
  ModelConfig qw = load_model_config(test::data_path("configs/qwen2-7b.json"));
  EXPECT_TRUE(qw.attention_bias);
  EXPECT_EQ(qw.gqa_ratio(), 7);
  EXPECT_EQ(qw.sliding_window, 0);  // use_sliding_window absent -> off
}

TEST(ModelConfig, RopeFrequencies) {
  json j = base();
  j["rope_theta"] = 10000.0;
  ModelConfig c = parse_model_config(j);
  auto f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 32u);  // head_dim 64
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_NEAR(f[1], std::pow(10000.0, -2.0 / 64), 1e-15);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  auto fl = rope_inv_freq(parse_model_config(j));
  EXPECT_DOUBLE_EQ(fl[1], f[1] / 4);
  // llama3: highest frequencies kept, lowest divided by factor, a smooth blend between.
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  j["head_dim"] = 128;
  j["rope_theta"] = 500000.0;
  ModelConfig c3 = parse_model_config(j);
  auto f3 = rope_inv_freq(c3);
  c3.rope_scaling.type = "default";
  auto f0 = rope_inv_freq(c3);
  EXPECT_DOUBLE_EQ(f3[0], f0[0]);
  EXPECT_DOUBLE_EQ(f3[63], f0[63] / 8);
  bool blended = false;
  for (int i = 0; i < 64; ++i) blended |= f3[size_t(i)] < f0[size_t(i)] && f3[size_t(i)] > f0[size_t(i)] / 8;
  EXPECT_TRUE(blended);
}

TEST(ModelConfig, ClearErrors) {
  json j = base();
  j["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_THAT(error_of(j), HasSubstr("unsupported architecture 'GPT2LMHeadModel'"));
  j = base();
  j.erase("hidden_size");
  EXPECT_THAT(error_of(j), HasSubstr("'hidden_size' is missing"));
  j = base();
  j["num_key_value_heads"] = 3;
  EXPECT_THAT(error_of(j), HasSubstr("not a multiple of num_key_value_heads"));
  j = base();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_THAT(error_of(j), HasSubstr("'yarn'"));
  j = base();
  j["hidden_act"] = "gelu";
  EXPECT_THAT(error_of(j), HasSubstr("hidden_act 'gelu'"));
  j = base();
  j["hidden_size"] = "big";
  EXPECT_THAT(error_of(j), HasSubstr("'hidden_size' must be an integer"));
}

}  // namespace
}  // namespace qs::io
