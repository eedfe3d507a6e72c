// The built-in model shapes (engine/model_shapes.h) are the public configs of ../shared/data/configs, verbatim.
#include "engine/model_shapes.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/test_util.h"
#include "core/error.h"

namespace qs {
namespace {

TEST(ModelShapes, EqualTheSharedConfigFiles) {
  QS_REQUIRE_DATA("configs/llama-3-8b.json");
  ASSERT_GE(engine::builtin_shape_names().size(), 9u);
  for (const std::string& n : engine::builtin_shape_names()) {
    std::ifstream f(test::data_path("configs/" + n + ".json"), std::ios::binary);
    ASSERT_TRUE(f.good()) << n;
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_EQ(engine::builtin_shape_json(n), ss.str()) << n;
  }
}

TEST(ModelShapes, ParseToThePaperShapes) {
  const io::ModelConfig l3 = engine::builtin_shape("llama-3-8b");
  EXPECT_EQ(l3.hidden_size, 4096);
  EXPECT_EQ(l3.intermediate_size, 14336);
  EXPECT_EQ(l3.num_kv_heads, 8);
  EXPECT_EQ(l3.vocab_size, 128256);
  const io::ModelConfig l70 = engine::builtin_shape("llama-2-70b");
  EXPECT_EQ(l70.num_layers, 80);
  EXPECT_EQ(l70.hidden_size, 8192);
  EXPECT_EQ(l70.head_dim, 128);
  EXPECT_TRUE(engine::builtin_shape("qwen2-7b").attention_bias);
  for (const char* n : {"llama-3.1-8b", "llama-2-7b", "llama-2-13b", "mistral-7b", "yi-34b", "qwen1.5-72b"})
    EXPECT_EQ(engine::builtin_shape(n).head_dim, 128) << n;
}

TEST(ModelShapes, UnknownNameListsTheKnownOnes) {
  const std::string e = test::error_of([] { engine::builtin_shape("llama-9-1b"); });
  EXPECT_NE(e.find("llama-9-1b"), std::string::npos) << e;
  EXPECT_NE(e.find("llama-3-8b"), std::string::npos) << e;
}

}  // namespace
}  // namespace qs
