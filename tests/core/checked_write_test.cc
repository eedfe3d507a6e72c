// Checked writes (core/file_io.h; issue 13: "unchecked writes: ppl --json /dev/full exits 0"): write_file_checked
// and CheckedWriter report a full device as an error naming the path, including the case where every fwrite is
// buffered and only the flush fails; a normal write round-trips; an unwritable path is an error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/test_util.h"
#include "core/file_io.h"

namespace {

using ::testing::HasSubstr;

TEST(CheckedWrite, AFullDeviceIsAnErrorNamingThePath) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  // Small data: fwrite only fills the buffer; the failure shows at the flush.
  EXPECT_THAT(qs::test::error_of([] { qs::write_file_checked("/dev/full", "{\"nll\": 1.0}\n"); }),
              HasSubstr("writing /dev/full failed"));
  // Large data: fwrite itself fails.
  EXPECT_THAT(qs::test::error_of([] { qs::write_file_checked("/dev/full", std::string(1 << 20, 'x')); }),
              HasSubstr("writing /dev/full failed"));
  std::FILE* f = std::fopen("/dev/full", "w");
  ASSERT_NE(f, nullptr);
  {
    qs::CheckedWriter w(f, "the results file");
    EXPECT_THAT(qs::test::error_of([&] {
                  w.write("a line\n");
                  w.printf("%d\n", 42);
                  w.flush();
                }),
                HasSubstr("the results file"));
  }
  std::fclose(f);
}

TEST(CheckedWrite, NormalWritesRoundTripAndBadPathsAreErrors) {
  const auto p = std::filesystem::temp_directory_path() / ("qs_checked_write_" + std::to_string(::getpid()));
  qs::write_file_checked(p.string(), "hello\n");
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), "hello\n");
  std::filesystem::remove(p);
  EXPECT_THAT(qs::test::error_of([] { qs::write_file_checked("/nonexistent/dir/out.json", "x"); }),
              HasSubstr("cannot write /nonexistent/dir/out.json"));
}

}  // namespace
