// `qserve quantize` end to end through the built binary (found beside this test executable; skipped when it was
// not built): clear errors for a non-Llama checkpoint, a too-short calibration text, an unwritable or non-empty
// output directory; a small run writes a complete checkpoint and no temporary directory; a run killed midway
// leaves nothing at DIR.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/test_util.h"
#include "quant/checkpoint.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
constexpr const char* kModel = "models/qs-llama-tiny";

std::string qserve_binary() { return (fs::read_symlink("/proc/self/exe").parent_path() / "qserve").string(); }

struct CliResult {
  int rc;
  std::string out;
};
CliResult run(const std::string& args) {
  const std::string cmd = qserve_binary() + " quantize " + args + " --quiet 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

class QuantizeCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(qserve_binary())) GTEST_SKIP() << "qserve binary not built: " << qserve_binary();
    QS_REQUIRE_DATA(kModel);
    model_ = qs::test::data_path(kModel);
    tmp_ = fs::temp_directory_path() / ("qoq_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override {
    if (!tmp_.empty()) fs::remove_all(tmp_);
  }
  std::string model_;
  fs::path tmp_;
};

TEST_F(QuantizeCli, BadInputGivesClearErrors) {
  fs::create_directories(tmp_ / "gpt2");
  std::ofstream(tmp_ / "gpt2" / "config.json") << R"({"architectures": ["GPT2LMHeadModel"]})";
  CliResult r = run("--model " + (tmp_ / "gpt2").string() + " --out " + (tmp_ / "o").string() + " --variant g128");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("supports Llama-family checkpoints"));
  EXPECT_THAT(r.out, HasSubstr("GPT2LMHeadModel"));

  std::ofstream(tmp_ / "short.txt") << "far too short for calibration";
  r = run("--model " + model_ + " --out " + (tmp_ / "o").string() + " --variant g128 --calib " +
          (tmp_ / "short.txt").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("calibration text too short"));
  EXPECT_FALSE(fs::exists(tmp_ / "o"));

  r = run("--model " + model_ + " --out /proc/qoq_cannot_write_here --variant g128");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("cannot write the output directory"));

  fs::create_directories(tmp_ / "full");
  std::ofstream(tmp_ / "full" / "something") << "x";
  r = run("--model " + model_ + " --out " + (tmp_ / "full").string() + " --variant per-channel");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("exists and is not empty"));

  r = run("--model " + model_ + " --out " + (tmp_ / "o").string() +
          " --variant g128 --smooth-attn-search --smooth-attn-alpha 0.5");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("--smooth-attn-search or --smooth-attn-alpha, not both"));

  r = run("--model " + model_ + " --out " + (tmp_ / "o").string() + " --variant g64");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("g64"));
  // Nothing was left behind by the failures.
  for (const auto& e : fs::directory_iterator(tmp_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST_F(QuantizeCli, SmallRunWritesACompleteCheckpoint) {
  const fs::path out = tmp_ / "ck";
  CliResult r = run("--model " + model_ + " --out " + out.string() +
              " --variant per-channel --calib-samples 2 --calib-len 64 --sample-rows 32 --clip-steps 10");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("per-layer quantization error"));
  EXPECT_THAT(r.out, HasSubstr("model.layers.3.mlp.down_proj"));
  EXPECT_TRUE(qs::quant::QuantizedCheckpoint::is_quantized_checkpoint(out.string()));
  const auto ck = qs::quant::QuantizedCheckpoint::open(out.string());
  EXPECT_EQ(ck.meta().variant, qs::WeightFormat::kW4A8PerChannel);
  EXPECT_EQ(ck.meta().qoq["calib_samples"].get<int>(), 2);
  EXPECT_TRUE(ck.meta().qoq["clip"].get<bool>());
  // SmoothAttention searched by default: one alpha per KV head per layer in the metadata, and in the report.
  EXPECT_TRUE(ck.meta().qoq["smooth_attention_search"].get<bool>());
  ASSERT_EQ(ck.meta().qoq["smooth_attention_searched"].size(), 4u);
  EXPECT_EQ(ck.meta().qoq["smooth_attention_searched"][3].size(), 2u);
  EXPECT_THAT(r.out, HasSubstr("SmoothAttention alpha per KV head"));
  EXPECT_EQ(ck.linear_names().size(), 28u);
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  for (const auto& e : fs::directory_iterator(tmp_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  // Quantizing the quantized checkpoint again is refused.
  r = run("--model " + out.string() + " --out " + (tmp_ / "again").string() + " --variant g128");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("already a qserve quantized checkpoint"));
}

TEST_F(QuantizeCli, KilledRunLeavesNothingAtDir) {
  const fs::path out = tmp_ / "killed";
  const std::string cmd = qserve_binary() + " quantize --model " + model_ + " --out " + out.string() +
                          " --variant g128 --calib-samples 8 --calib-len 256 --quiet";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::seconds(4));
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st)) << "the run finished within 4 s; nothing was interrupted";
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(qs::quant::QuantizedCheckpoint::is_quantized_checkpoint(out.string()));
}

TEST_F(QuantizeCli, InterruptedRunCleansUp) {
  const fs::path out = tmp_ / "interrupted";
  const std::string cmd = qserve_binary() + " quantize --model " + model_ + " --out " + out.string() +
                          " --variant g128 --calib-samples 8 --calib-len 256 --quiet";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::seconds(4));
  kill(pid, SIGINT);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st)) << "expected a clean exit after SIGINT";
  EXPECT_EQ(WEXITSTATUS(st), 1);
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(tmp_))  // the temporary directory was removed too
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

}  // namespace
