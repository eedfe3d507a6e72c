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
  // Contradictory flags (a setting of a step that is switched off) are refused.
  r = run("--model " + model_ + " --out " + (tmp_ / "o").string() + " --variant g128 --rtn --clip-steps 5");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("excludes"));
  r = run("--model " + model_ + " --out " + (tmp_ / "o").string() + " --variant g128 --no-smooth-down "
          "--smooth-down-alpha 0.2 --smooth-down-beta 0.8");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("excludes"));
  // --model naming a file.
  r = run("--model " + model_ + "/config.json --out " + (tmp_ / "o").string() + " --variant g128");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("is a file; give the checkpoint folder"));
  // Nothing was left behind by the failures.
  for (const auto& e : fs::directory_iterator(tmp_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

// Data loss (issue 13): --out overlapping --model, or a folder qserve did not write, is never removed, --force or
// not. The model is a folder of links to the shared files so that nothing shared is at stake if a check fails.
TEST_F(QuantizeCli, NeverRemovesWhatItDidNotWrite) {
  const fs::path m = tmp_ / "work" / "model";
  fs::create_directories(m);
  for (const auto& e : fs::directory_iterator(model_)) fs::create_symlink(e.path(), m / e.path().filename());
  std::ofstream(tmp_ / "work" / "notes.txt") << "precious";
  const size_t model_files = std::distance(fs::directory_iterator(m), fs::directory_iterator());
  auto intact = [&] {
    EXPECT_EQ(size_t(std::distance(fs::directory_iterator(m), fs::directory_iterator())), model_files);
    EXPECT_TRUE(fs::exists(tmp_ / "work" / "notes.txt"));
  };
  const std::string base = "--model " + m.string() + " --variant g128 --force --out ";
  CliResult r = run(base + m.string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("is the --model folder"));
  r = run(base + (m / ".." / "model").string());  // the same folder, spelled differently
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("is the --model folder"));
  r = run(base + (m / "sub").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("is inside the --model folder"));
  r = run(base + (tmp_ / "work").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("contains the --model folder"));
  fs::create_directory_symlink(tmp_ / "work", tmp_ / "link");
  r = run(base + (tmp_ / "link").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("symbolic link"));
  r = run("--model " + (tmp_ / "link" / "model").string() + " --variant g128 --force --out " + (tmp_ / "work").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("contains the --model folder"));
  intact();

  // A non-empty folder that is not a qserve output: refused with --force, untouched.
  fs::create_directories(tmp_ / "foreign" / "deep");
  std::ofstream(tmp_ / "foreign" / "deep" / "data.bin") << "keep";
  r = run(base + (tmp_ / "foreign").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("not a previous qserve quantize output"));
  EXPECT_TRUE(fs::exists(tmp_ / "foreign" / "deep" / "data.bin"));
  // A qserve output (marker) that also holds a file qserve did not write: refused, untouched.
  fs::create_directories(tmp_ / "mixed");
  std::ofstream(tmp_ / "mixed" / ".qserve-output") << "x";
  std::ofstream(tmp_ / "mixed" / "model.safetensors") << "x";
  std::ofstream(tmp_ / "mixed" / "my-notes.txt") << "keep";
  r = run(base + (tmp_ / "mixed").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("'my-notes.txt', which qserve did not write"));
  EXPECT_TRUE(fs::exists(tmp_ / "mixed" / "my-notes.txt"));
  for (const auto& e : fs::directory_iterator(tmp_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  intact();
}

TEST_F(QuantizeCli, SmallRunWritesACompleteCheckpoint) {
  const fs::path out = tmp_ / "ck";
  CliResult r = run("--model " + model_ + " --out " + out.string() +
              " --variant per-channel --calib-samples 2 --calib-len 64 --sample-rows 32 --clip-steps 10");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("per-layer quantization error"));
  EXPECT_THAT(r.out, HasSubstr("model.layers.3.mlp.down_proj"));
  EXPECT_TRUE(qs::model::QuantizedCheckpoint::is_quantized_checkpoint(out.string()));
  const auto ck = qs::model::QuantizedCheckpoint::open(out.string());
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
  EXPECT_TRUE(fs::exists(out / ".qserve-output"));
  for (const auto& e : fs::directory_iterator(tmp_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  // A previous qserve output is replaced with --force (and only with it), leaving nothing of the old one beside it.
  const std::string again = "--model " + model_ + " --out " + out.string() +
                            " --variant g128 --calib-samples 2 --calib-len 64 --sample-rows 32 --no-gptq";
  r = run(again);
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("exists and is not empty"));
  r = run(again + " --force");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(qs::model::QuantizedCheckpoint::open(out.string()).meta().variant, qs::WeightFormat::kW4A8G128);
  for (const auto& e : fs::directory_iterator(tmp_)) EXPECT_EQ(e.path().filename(), "ck") << e.path();
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
  EXPECT_FALSE(qs::model::QuantizedCheckpoint::is_quantized_checkpoint(out.string()));
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
