// Checked writes (core/file_io.h; issue 13: "unchecked writes: ppl --json /dev/full exits 0"): write_file_checked
// and CheckedWriter report a full device as an error naming the path, including the case where every fwrite is
// buffered and only the flush fails; a normal write round-trips; an unwritable path is an error; write_fd_all
// fails on a full device and removes the partial file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
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

TEST(CheckedWrite, DescriptorWritesFailOnAFullDeviceAndRemoveThePartialFile) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  const auto partial = std::filesystem::temp_directory_path() / ("qs_partial_" + std::to_string(::getpid()));
  std::ofstream(partial) << "half a file";
  ASSERT_TRUE(std::filesystem::exists(partial));
  const int fd = ::open("/dev/full", O_WRONLY);
  ASSERT_GE(fd, 0);
  const std::string data(1 << 16, 'x');
  EXPECT_THAT(qs::test::error_of([&] { qs::write_fd_all(fd, data.data(), data.size(), partial.string(), "out.st"); }),
              HasSubstr("writing out.st failed"));
  EXPECT_FALSE(std::filesystem::exists(partial)) << "the partial file is removed";
  // A good descriptor gets every byte.
  const auto ok = std::filesystem::temp_directory_path() / ("qs_full_write_" + std::to_string(::getpid()));
  const int fd2 = ::open(ok.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd2, 0);
  qs::write_fd_all(fd2, data.data(), data.size(), ok.string(), "ok");
  ::close(fd2);
  EXPECT_EQ(std::filesystem::file_size(ok), data.size());
  std::filesystem::remove(ok);
}

}  // namespace
