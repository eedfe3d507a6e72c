// Seed flags (issue 13: "seeds out of range silently clamped"). CLI11 read them with strtoull, so "-1" wrapped to
// 2^64 - 1, 2^64 clamped to 2^64 - 1 and "010" was octal 8, all with exit 0. cli/seed_option.h parses a decimal
// integer in [0, 2^64 - 1] and anything else is an error naming the flag: checked on the parser and through the
// binary for every command with a seed (generate --seed, make-random --seed, bench --seed, quantize --calib-seed).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/seed_option.h"
#include "common/test_util.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST(SeedOption, AcceptsTheWholeUint64RangeInDecimal) {
  EXPECT_EQ(qs::cli::parse_seed("0", "--seed"), 0u);
  EXPECT_EQ(qs::cli::parse_seed("42", "--seed"), 42u);
  EXPECT_EQ(qs::cli::parse_seed("010", "--seed"), 10u) << "decimal, never octal";
  EXPECT_EQ(qs::cli::parse_seed("18446744073709551615", "--seed"), UINT64_MAX);
  EXPECT_EQ(qs::cli::parse_seed("00000000000000000001", "--seed"), 1u);
}

TEST(SeedOption, OutOfRangeOrNonDecimalIsAnErrorNamingTheFlag) {
  for (const char* bad : {"-1", "18446744073709551616", "99999999999999999999", "184467440737095516150", "+5",
                          "0x10", "1e3", " 7", "7 ", "", "seven", "3.0"}) {
    const std::string msg = qs::test::error_of([&] { qs::cli::parse_seed(bad, "--calib-seed"); });
    EXPECT_THAT(msg, HasSubstr("--calib-seed must be a decimal integer in [0, 18446744073709551615], got '" +
                               std::string(bad) + "'"))
        << "input '" << bad << "'";
  }
}

// Through the binary (skipped when not built beside this test): the bad seed is refused before anything else
// runs, so the other arguments need not point at real files.
TEST(SeedOption, EveryCommandRefusesAnOutOfRangeSeed) {
  const std::string bin = (fs::read_symlink("/proc/self/exe").parent_path() / "qserve").string();
  if (!fs::exists(bin)) GTEST_SKIP() << "qserve binary not built: " << bin;
  auto run = [&](const std::string& args) {
    FILE* p = popen((bin + " " + args + " 2>&1").c_str(), "r");
    std::string out;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
    const int st = pclose(p);
    return std::make_pair(WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
  };
  const fs::path tmp = fs::temp_directory_path() / ("qs_seed_test_" + std::to_string(::getpid()));
  struct Case {
    std::string cmd, flag;
  };
  const Case cases[] = {
      {"generate --model /nonexistent/m --prompt hi", "--seed"},
      {"make-random --shape llama-3-8b --out " + (tmp / "never").string(), "--seed"},
      {"bench --shape llama-3-8b", "--seed"},
      {"quantize --model /nonexistent/m --out " + (tmp / "never2").string() + " --variant g128", "--calib-seed"},
  };
  for (const Case& c : cases)
    for (const char* bad : {"-1", "18446744073709551616"}) {
      auto [rc, out] = run(c.cmd + " " + c.flag + " " + bad);
      EXPECT_EQ(rc, 1) << c.cmd << " " << c.flag << " " << bad << ": " << out;
      EXPECT_THAT(out, HasSubstr("error: " + c.flag + " must be a decimal integer in [0, 18446744073709551615], got '" +
                                 bad + "'"))
          << c.cmd;
    }
  EXPECT_FALSE(fs::exists(tmp / "never")) << "nothing is written after a refused seed";
  EXPECT_FALSE(fs::exists(tmp / "never2"));
  // The largest seed is accepted: the command gets past option parsing and fails on its missing model instead.
  auto [rc, out] = run("generate --model /nonexistent/m --prompt hi --seed 18446744073709551615");
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("/nonexistent/m"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("--seed")));
}

}  // namespace
