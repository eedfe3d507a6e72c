// `qserve make-random` (io/random_checkpoint.h, cli/make_random_cmd.cc) on a tiny config: the shards respect the
// size limit and the index, the checkpoint loads as a model and runs with finite logits, norm weights are 1 and
// the other weights have the asked standard deviation (within 3%, 10^5 samples per tensor), the same seed gives
// the same bytes and another seed other bytes; the binary copies the tokenizer and rejects bad input clearly.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/test_util.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

nlohmann::json tiny_config() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 96, "intermediate_size": 160,
    "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 32,
    "vocab_size": 300, "rope_theta": 10000.0, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1})");
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class MakeRandom : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fs::temp_directory_path() / ("make_random_test_" + std::to_string(::getpid()));
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override { fs::remove_all(tmp_); }
  fs::path tmp_;
};

TEST_F(MakeRandom, ShardsLoadAndStatistics) {
  qs::io::RandomCheckpointOptions o;
  o.config = tiny_config();
  o.out = (tmp_ / "a").string();
  o.seed = 7;
  o.stddev = 0.02;
  o.max_shard_bytes = 100'000;  // forces several shards
  const auto st = qs::io::write_random_checkpoint(o);
  const auto specs = qs::io::llama_family_tensors(o.config);
  int64_t params = 0;
  for (const auto& s : specs) params += s.numel();
  EXPECT_EQ(st.parameters, params);
  EXPECT_EQ(st.bytes, params * 2);
  EXPECT_GT(st.shards, 2);
  int files = 0;
  for (const auto& e : fs::directory_iterator(o.out))
    if (e.path().extension() == ".safetensors") {
      ++files;
      // A shard holds at most max_shard_bytes of data unless one tensor alone is larger (embed: 300 x 96 x 2).
      EXPECT_LE(int64_t(fs::file_size(e.path())), 100'000 + 300 * 96 * 2 + 4096) << e.path();
    }
  EXPECT_EQ(files, st.shards);
  const auto index = nlohmann::json::parse(read_all(fs::path(o.out) / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"].size(), specs.size());
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), st.bytes);

  auto store = qs::io::TensorStore::open(o.out);
  for (const auto& s : specs) {
    const qs::Tensor t = store.get(s.name);
    ASSERT_EQ(t.dtype(), qs::DType::BF16) << s.name;
    ASSERT_EQ(t.shape(), s.shape) << s.name;
    const uint16_t* p = t.data<uint16_t>();
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double x = qs::bf16_to_float(p[i]);
      sum += x;
      sq += x * x;
    }
    const double n = double(t.numel()), mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
    if (s.ones) {
      EXPECT_EQ(mean, 1.0) << s.name;
      EXPECT_EQ(sd, 0.0) << s.name;
    } else if (t.numel() >= 10000) {
      EXPECT_NEAR(sd, 0.02, 0.02 * 0.03) << s.name;
      EXPECT_NEAR(mean, 0.0, 5 * 0.02 / std::sqrt(n)) << s.name;
    }
  }
  auto m = qs::model::Model::load(o.out);
  EXPECT_EQ(m->config().num_layers, 3);
  std::vector<int32_t> ids{0, 5, 299, 17, 42};
  auto cache = m->new_cache();
  qs::Tensor logits = m->forward({{ids.data(), 5, &cache}}, qs::model::LogitsMode::kAll);
  ASSERT_EQ(logits.numel(), 5 * 300);
  for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_TRUE(std::isfinite(logits.data<float>()[i]));
}

TEST_F(MakeRandom, DeterministicPerSeed) {
  qs::io::RandomCheckpointOptions o;
  o.config = tiny_config();
  o.out = (tmp_ / "a").string();
  o.seed = 3;
  qs::io::write_random_checkpoint(o);
  o.out = (tmp_ / "b").string();
  qs::io::write_random_checkpoint(o);
  o.out = (tmp_ / "c").string();
  o.seed = 4;
  qs::io::write_random_checkpoint(o);
  const std::string f = "model-00001-of-00001.safetensors";
  EXPECT_EQ(read_all(tmp_ / "a" / f), read_all(tmp_ / "b" / f));
  // Another seed: other bytes (beyond the header, which differs only in its seed note).
  const std::string a = read_all(tmp_ / "a" / f), c = read_all(tmp_ / "c" / f);
  ASSERT_EQ(a.size(), c.size());
  int64_t diff = 0;
  for (size_t i = a.size() / 2; i < a.size(); ++i) diff += a[i] != c[i];
  EXPECT_GT(diff, int64_t(a.size()) / 4);
}

TEST_F(MakeRandom, BadInput) {
  qs::io::RandomCheckpointOptions o;
  o.config = tiny_config();
  o.config["architectures"] = {"GPT2LMHeadModel"};
  o.out = (tmp_ / "x").string();
  EXPECT_THAT(qs::test::error_of([&] { qs::io::write_random_checkpoint(o); }), HasSubstr("GPT2LMHeadModel"));
  o.config = tiny_config();
  fs::create_directories(tmp_ / "full");
  std::ofstream(tmp_ / "full" / "keep.txt") << "x";
  o.out = (tmp_ / "full").string();
  EXPECT_THAT(qs::test::error_of([&] { qs::io::write_random_checkpoint(o); }), HasSubstr("not an empty directory"));
  EXPECT_TRUE(fs::exists(tmp_ / "full" / "keep.txt"));  // nothing deleted
}

// Through the binary (skipped when not built beside this test).
TEST_F(MakeRandom, Cli) {
  const std::string bin = (fs::read_symlink("/proc/self/exe").parent_path() / "qserve").string();
  if (!fs::exists(bin)) GTEST_SKIP() << "qserve binary not built: " << bin;
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  std::ofstream(tmp_ / "cfg.json") << tiny_config().dump();
  auto run = [&](const std::string& args) {
    FILE* p = popen((bin + " make-random " + args + " 2>&1").c_str(), "r");
    std::string out;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
    const int st = pclose(p);
    return std::make_pair(WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
  };
  auto [rc, out] = run("--config " + (tmp_ / "cfg.json").string() + " --out " + (tmp_ / "m").string() + " --seed 5");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("in 1 shard(s)"));
  EXPECT_TRUE(fs::exists(tmp_ / "m" / "tokenizer.json"));
  EXPECT_EQ(nlohmann::json::parse(read_all(tmp_ / "m" / "config.json"))["torch_dtype"], "bfloat16");
  std::tie(rc, out) = run("--config " + (tmp_ / "cfg.json").string() + " --out " + (tmp_ / "m").string());
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("not an empty directory"));
  std::tie(rc, out) = run("--shape no-such-model --out " + (tmp_ / "n").string());
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("unknown shape 'no-such-model'"));
  EXPECT_FALSE(fs::exists(tmp_ / "n"));
}

}  // namespace
