// Hostile checkpoint folders (issue 13): config values that are impossible or do not fit are rejected naming the
// field; shard paths are confined to the checkpoint folder; FIFOs and directories where a file is expected are
// errors naming the path (never a hang); error messages never echo a file's bytes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/test_util.h"
#include "core/error.h"
#include "core/file_io.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace qs::io {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::AllOf;
using ::testing::Not;
using json = nlohmann::json;

json base() {
  return json::parse(R"({"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":512,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rms_norm_eps":1e-6,
    "bos_token_id":1,"eos_token_id":[2,3]})");
}
std::string config_error(const json& j) { return test::error_of([&] { parse_model_config(j); }); }
json with(const char* key, json v) {
  json j = base();
  j[key] = std::move(v);
  return j;
}

TEST(HostileConfig, ImpossibleValuesAreRejectedNamingTheField) {
  EXPECT_EQ(config_error(base()), "(no error)");
  EXPECT_THAT(config_error(with("rms_norm_eps", 0)), HasSubstr("'rms_norm_eps' must be positive"));
  EXPECT_THAT(config_error(with("rms_norm_eps", -1e-6)), HasSubstr("'rms_norm_eps' must be positive"));
  EXPECT_THAT(config_error(with("rope_theta", 0)), HasSubstr("'rope_theta' must be positive"));
  EXPECT_THAT(config_error(with("rope_theta", -10000.0)), HasSubstr("'rope_theta' must be positive"));
  EXPECT_THAT(config_error(with("rope_scaling", json{{"rope_type", "llama3"}, {"factor", 0}})),
              HasSubstr("'factor' must be positive"));
  EXPECT_THAT(config_error(with("rope_scaling", json{{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 0}})),
              HasSubstr("'low_freq_factor' must be positive"));
  EXPECT_THAT(config_error(with("rope_parameters", json{{"rope_type", "default"}, {"rope_theta", 0}})),
              HasSubstr("'rope_theta' must be positive"));
  EXPECT_THAT(config_error(with("max_position_embeddings", 0)), HasSubstr("'max_position_embeddings'"));
  EXPECT_THAT(config_error(with("max_position_embeddings", -5)), HasSubstr("'max_position_embeddings'"));
  EXPECT_THAT(config_error(with("hidden_size", 0)), HasSubstr("'hidden_size'"));
  EXPECT_THAT(config_error(with("num_hidden_layers", -1)), HasSubstr("'num_hidden_layers'"));
  EXPECT_THAT(config_error(with("head_dim", -2)), HasSubstr("'head_dim'"));
  EXPECT_THAT(config_error(with("sliding_window", -4096)), HasSubstr("'sliding_window'"));
  EXPECT_THAT(config_error(with("rms_norm_eps", 1e308 * 10)), Not(HasSubstr("(no error)")));  // inf or null
}

TEST(HostileConfig, IntegersThatDoNotFitAreRejectedNotTruncated) {
  // 4294967808 = 2^32 + 512 would become 512 as an int.
  EXPECT_THAT(config_error(with("hidden_size", 4294967808LL)), HasSubstr("'hidden_size' = 4294967808 is out of range"));
  EXPECT_THAT(config_error(with("vocab_size", uint64_t(18446744073709551615ULL))), HasSubstr("'vocab_size'"));
  EXPECT_THAT(config_error(with("num_attention_heads", 1LL << 40)), HasSubstr("'num_attention_heads'"));
  EXPECT_THAT(config_error(with("eos_token_id", 4294967298LL)), HasSubstr("'eos_token_id'"));
  EXPECT_THAT(config_error(with("bos_token_id", -1)), HasSubstr("'bos_token_id'"));
  EXPECT_THAT(config_error(with("rope_scaling", json{{"rope_type", "llama3"}, {"original_max_position_embeddings", 0}})),
              HasSubstr("'original_max_position_embeddings'"));
}

TEST(HostileConfig, TypeErrorsNameTheFieldAndTheFile) {
  EXPECT_THAT(config_error(with("model_type", 5)), HasSubstr("'model_type' must be a string"));
  EXPECT_THAT(config_error(with("hidden_act", json::array())), HasSubstr("'hidden_act' must be a string"));
  EXPECT_THAT(config_error(with("torch_dtype", 16)), HasSubstr("'torch_dtype' must be a string"));
  EXPECT_THAT(config_error(with("architectures", json::array({7}))), HasSubstr("'architectures'"));
  EXPECT_THAT(config_error(with("rope_scaling", json{{"rope_type", 3}})), HasSubstr("'rope_type' must be a string"));
  EXPECT_THAT(config_error(with("hidden_size", "256")), HasSubstr("'hidden_size' must be an integer"));
  const fs::path dir = fs::temp_directory_path() / ("qs_hostile_cfg_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << with("model_type", 5).dump();
  EXPECT_THAT(test::error_of([&] { load_model_config(dir.string()); }),
              ::testing::AllOf(HasSubstr((dir / "config.json").string()), HasSubstr("'model_type'")));
  fs::remove_all(dir);
}

class HostileFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qs_hostile_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "ck");
    SafetensorsWriter w;
    Tensor t(DType::F32, {2, 3});
    for (int i = 0; i < 6; ++i) t.data<float>()[i] = float(i);
    w.add("a", t);
    w.write((dir_ / "outside.safetensors").string());
    w.write((dir_ / "ck" / "shard.safetensors").string());
  }
  void TearDown() override { fs::remove_all(dir_); }
  void index(const std::string& shard) {
    std::ofstream(dir_ / "ck" / "model.safetensors.index.json") << json{{"weight_map", {{"a", shard}}}}.dump();
  }
  std::string open_error() { return test::error_of([&] { TensorStore::open((dir_ / "ck").string()); }); }
  fs::path dir_;
};

TEST_F(HostileFolder, ShardPathsAreConfinedToTheFolder) {
  index("shard.safetensors");
  EXPECT_EQ(open_error(), "(no error)");
  index("../outside.safetensors");
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  index((dir_ / "outside.safetensors").string());
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  index("sub/../../outside.safetensors");
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  index("/etc/passwd");
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  index("");
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  // Subfolders are refused; "./name" is the file name itself (found by the fuzzer: the stored path was "ck/./name").
  fs::create_directories(dir_ / "ck" / "sub");
  fs::copy_file(dir_ / "ck" / "shard.safetensors", dir_ / "ck" / "sub" / "shard.safetensors");
  index("sub/shard.safetensors");
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  index(".");
  EXPECT_THAT(open_error(), HasSubstr("not a file inside the checkpoint folder"));
  index("./shard.safetensors");
  EXPECT_EQ(open_error(), "(no error)");
  const auto store = TensorStore::open((dir_ / "ck").string());
  EXPECT_EQ(fs::path(store.info("a").file), dir_ / "ck" / "shard.safetensors");
}

TEST_F(HostileFolder, FifosAndDirectoriesAreErrorsNamingThePath) {
  const fs::path fifo = dir_ / "ck" / "pipe.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  index("pipe.safetensors");
  EXPECT_THAT(open_error(), AllOf(HasSubstr(fifo.string()), HasSubstr("FIFO")));  // used to hang
  fs::remove(fifo);
  fs::create_directory(fifo);
  EXPECT_THAT(open_error(), AllOf(HasSubstr(fifo.string()), HasSubstr("is a directory")));
  fs::remove(fifo);
  fs::remove(dir_ / "ck" / "model.safetensors.index.json");
  fs::create_directory(dir_ / "ck" / "model.safetensors.index.json");
  EXPECT_THAT(open_error(), AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("is a directory")));
  fs::remove(dir_ / "ck" / "model.safetensors.index.json");
  fs::remove(dir_ / "ck" / "shard.safetensors");
  fs::create_directory(dir_ / "ck" / "model.safetensors");
  EXPECT_THAT(open_error(), AllOf(HasSubstr("model.safetensors"), HasSubstr("is a directory")));
  // config.json as a FIFO or a directory.
  const fs::path cfg = dir_ / "cfg";
  fs::create_directories(cfg);
  ASSERT_EQ(::mkfifo((cfg / "config.json").c_str(), 0600), 0);
  EXPECT_THAT(test::error_of([&] { load_model_config(cfg.string()); }),
              AllOf(HasSubstr((cfg / "config.json").string()), HasSubstr("FIFO")));
  EXPECT_THAT(test::error_of([&] { read_file_checked("/dev/zero", "test file"); }), HasSubstr("character device"));
}

TEST_F(HostileFolder, ErrorsNeverEchoFileBytes) {
  // A "safetensors" file whose first bytes are a secret: the message must not contain them, in any spelling.
  const std::string secret = "SECRET-PASSWORD-1234";
  std::ofstream(dir_ / "ck" / "leak.safetensors") << secret << std::string(100, 'x');
  index("leak.safetensors");
  std::string e = open_error();
  EXPECT_THAT(e, HasSubstr("leak.safetensors"));
  EXPECT_THAT(e, Not(HasSubstr("SECRET")));
  uint64_t as_number = 0;
  std::memcpy(&as_number, secret.data(), 8);
  EXPECT_THAT(e, Not(HasSubstr(std::to_string(as_number))));
  // A header length that fits but a body that is not JSON: the parser's "last read" text is not echoed.
  {
    std::ofstream f(dir_ / "ck" / "leak.safetensors", std::ios::binary | std::ios::trunc);
    const uint64_t n = secret.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << secret;
  }
  e = open_error();
  EXPECT_THAT(e, HasSubstr("not valid JSON (syntax error at byte"));
  EXPECT_THAT(e, Not(HasSubstr("SECRET")));
  // Same for config.json and the shard index.
  std::ofstream(dir_ / "ck" / "model.safetensors.index.json", std::ios::trunc) << secret;
  EXPECT_THAT(open_error(), AllOf(HasSubstr("not valid JSON"), Not(HasSubstr("SECRET"))));
  std::ofstream(dir_ / "ck" / "config.json") << secret;
  EXPECT_THAT(test::error_of([&] { load_model_config((dir_ / "ck").string()); }),
              AllOf(HasSubstr("not valid JSON"), Not(HasSubstr("SECRET"))));
}

}  // namespace
}  // namespace qs::io
