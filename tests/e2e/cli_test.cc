// Runs the `qserve` binary built next to this test (same build folder): `generate` prints the prompt and
// exactly HF's greedy continuation for qs-llama-tiny and a tokens/s line on stderr; `inspect` prints the tensor
// table and the parameter count; bad input exits with status 1 and an "error:" line.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/test_util.h"

namespace {

const char* const kModel = "models/qs-llama-tiny";

std::string qserve_path() {
  std::array<char, 4096> buf{};
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  return (std::filesystem::path(std::string(buf.data(), size_t(n))).parent_path() / "qserve").string();
}

struct CliRun {
  int status = -1;
  std::string out, err;
};

// Runs `qserve args` with stdout captured and stderr redirected to a temp file.
CliRun run_qserve(const std::string& args) {
  const std::string err_file = std::filesystem::temp_directory_path() / ("qs_cli_err_" + std::to_string(getpid()));
  const std::string cmd = qserve_path() + " " + args + " 2>" + err_file;
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream e(err_file);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  std::filesystem::remove(err_file);
  return r;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!qs::test::data_available(kModel)) GTEST_SKIP() << "test data not found: " << qs::test::data_path(kModel);
    if (!std::filesystem::exists(qserve_path()))
      GTEST_SKIP() << "the qserve binary is not built next to this test (" << qserve_path() << "): build target qserve_cli";
    model_ = qs::test::data_path(kModel);
  }
  std::string model_;
};

TEST_F(Cli, GeneratePrintsPromptAndReferenceGreedyTextAndSpeed) {
  std::ifstream f(qs::test::data_path("fixtures/reference_generations.json"));
  const auto c = nlohmann::json::parse(f)["cases"][0];
  const std::string prompt = c["prompt"], text = c["greedy_text"];
  CliRun r = run_qserve("generate --model '" + model_ + "' --prompt '" + prompt + "' --max-tokens 32 --ignore-eos");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, prompt + text + "\n");
  EXPECT_NE(r.err.find("generated 32 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
}

TEST_F(Cli, InspectPrintsTensorTableAndParameterCount) {
  CliRun r = run_qserve("inspect --model '" + model_ + "'");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("model.layers.3.mlp.down_proj.weight"), std::string::npos);
  EXPECT_NE(r.out.find("BF16   [512, 1536]"), std::string::npos);
  EXPECT_NE(r.out.find("16781824 parameters"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lm_head: tied to model.embed_tokens"), std::string::npos);
}

TEST_F(Cli, BadInputExitsWithStatusOneAndAMessage) {
  CliRun r = run_qserve("generate --model /nonexistent/model --prompt hi");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  CliRun s = run_qserve("generate --model '" + model_ + "' --prompt hi --top-p 2");
  EXPECT_EQ(s.status, 1);
  EXPECT_NE(s.err.find("top_p must be in (0, 1], got 2"), std::string::npos) << s.err;
  EXPECT_EQ(s.out, "") << "nothing is printed before the options are validated";
  // Issue 13: a negative temperature was silently greedy.
  CliRun t = run_qserve("generate --model '" + model_ + "' --prompt hi --temperature -1");
  EXPECT_EQ(t.status, 1);
  EXPECT_NE(t.err.find("temperature must be a finite number >= 0"), std::string::npos) << t.err;
}

// Issue 13: unchecked writes (a full disk) exited 0; --model naming a file or a folder with a FIFO for a shard.
TEST_F(Cli, WriteFailuresAndNonFolderModelsAreErrors) {
  const int st = std::system((qserve_path() + " inspect --model '" + model_ + "' > /dev/full 2>/dev/null").c_str());
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << "inspect > /dev/full must fail";
  CliRun r = run_qserve("inspect --model '" + model_ + "/config.json'");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("is a file; give the checkpoint folder"), std::string::npos) << r.err;
  const auto dir = std::filesystem::temp_directory_path() / ("qs_cli_fifo_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"})
    std::filesystem::copy_file(model_ + "/" + f, dir / f);
  ASSERT_EQ(mkfifo((dir / "model-00002-of-00002.safetensors").c_str(), 0600), 0);
  CliRun f = run_qserve("inspect --model '" + dir.string() + "'");  // used to hang forever
  EXPECT_EQ(f.status, 1);
  EXPECT_NE(f.err.find("is a FIFO"), std::string::npos) << f.err;
  std::filesystem::remove_all(dir);
}

}  // namespace
