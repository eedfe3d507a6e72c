// `qserve generate --prompt-file FILE | -` (issue 13: "no way to pass a prompt from a file or stdin; a 1 MB prompt
// cannot be given"): through the binary on qs-llama-tiny (CPU reference executor, greedy): a prompt read from a
// file and from standard input gives exactly the output of --prompt; a 1 MB prompt is read whole (the error is the
// context limit, naming its token count); a missing file, an empty prompt and --prompt with --prompt-file are
// clear errors; so is a GPU --dtype on the CPU executor. Skipped when the binary is not built beside this test or
// the model is missing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "common/test_util.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct CliRun {
  int rc;
  std::string out;  // stdout only (stderr has the timing line)
  std::string err;
};

class PromptFile : public ::testing::Test {
 protected:
  void SetUp() override {
    bin_ = (fs::read_symlink("/proc/self/exe").parent_path() / "qserve").string();
    if (!fs::exists(bin_)) GTEST_SKIP() << "qserve binary not built: " << bin_;
    QS_REQUIRE_DATA("models/qs-llama-tiny");
    model_ = qs::test::data_path("models/qs-llama-tiny");
    tmp_ = fs::temp_directory_path() / ("qs_prompt_file_" + std::to_string(::getpid()));
    fs::create_directories(tmp_);
  }
  void TearDown() override {
    if (!tmp_.empty()) fs::remove_all(tmp_);
  }
  // Runs `qserve generate --model M --device cpu --max-tokens 4 <args>`, optionally with `stdin_file` as input.
  CliRun generate(const std::string& args, const std::string& stdin_file = "") {
    const std::string errf = (tmp_ / "stderr.txt").string();
    std::string cmd = bin_ + " generate --model '" + model_ + "' --device cpu --max-tokens 4 " + args + " 2>" + errf;
    if (!stdin_file.empty()) cmd += " <" + stdin_file;
    FILE* p = popen(cmd.c_str(), "r");
    CliRun r{-1, "", ""};
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int st = pclose(p);
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::ifstream e(errf);
    r.err.assign(std::istreambuf_iterator<char>(e), std::istreambuf_iterator<char>());
    return r;
  }
  std::string write(const std::string& name, const std::string& text) {
    const fs::path f = tmp_ / name;
    std::ofstream(f, std::ios::binary) << text;
    return f.string();
  }
  std::string bin_, model_;
  fs::path tmp_;
};

TEST_F(PromptFile, FileAndStdinGiveTheSameOutputAsPrompt) {
  const std::string prompt = "The capital of France is";
  const CliRun a = generate("--prompt '" + prompt + "'");
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_THAT(a.out, HasSubstr(prompt));
  const std::string f = write("p.txt", prompt);
  const CliRun b = generate("--prompt-file '" + f + "'");
  EXPECT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(b.out, a.out);
  const CliRun c = generate("--prompt-file -", f);
  EXPECT_EQ(c.rc, 0) << c.err;
  EXPECT_EQ(c.out, a.out);
}

TEST_F(PromptFile, AOneMegabytePromptIsReadWhole) {
  std::mt19937 rng(7);
  const char* words[] = {"the", "of", "model", "cache", "paris", "a", "serve", "token"};
  std::string big;
  while (big.size() < (size_t(1) << 20)) big += std::string(words[rng() % 8]) + " ";
  const CliRun r = generate("--prompt-file '" + write("big.txt", big) + "'");
  EXPECT_EQ(r.rc, 1);
  // Every word is at least one token: the whole megabyte was read and tokenized before the limit was applied.
  EXPECT_THAT(r.err, ::testing::ContainsRegex("the prompt has [0-9]{6,} tokens; the context holds 2048"));
  EXPECT_EQ(r.out, "") << "nothing is generated";
}

TEST_F(PromptFile, BadPromptSourcesAreClearErrors) {
  CliRun r = generate("--prompt-file /nonexistent/p.txt");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("cannot open prompt file /nonexistent/p.txt"));
  r = generate("--prompt-file '" + write("empty.txt", "") + "'");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("the prompt is empty"));
  r = generate("--prompt hi --prompt-file '" + write("p2.txt", "hi") + "'");
  EXPECT_NE(r.rc, 0);
  EXPECT_THAT(r.err, HasSubstr("excludes"));
  r = generate("");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("give the prompt with --prompt TEXT or --prompt-file FILE"));
}

// Contradictory flags (issue 13: "--kv4 --fp-kv accepted"; the flags are now one --kv and one --dtype): a GPU
// numeric path on the CPU reference executor is refused before anything runs.
TEST_F(PromptFile, ContradictoryExecutorFlagsAreRefused) {
  const CliRun r = generate("--prompt hi --dtype fp16");
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("--dtype fp16 selects a GPU path; the CPU reference runs the checkpoint as it is"));
  EXPECT_EQ(r.out, "");
}

}  // namespace
