// A test binary with a planted failure, run only through tests/harness/check_harness.sh (ctest entry
// harness/check): it proves the harness reports a failure as a failure even when the same binary also skips a GPU
// test (the bug of issue 13: one SKIPPED line used to mark the whole binary skipped). Without the environment
// variables below it passes (one test passes, one GPU test skips on a machine without a GPU).
//   QSERVE_PLANTED_FAILURE=1   the host test fails
//   QSERVE_PLANTED_ALL_SKIP=1  the host test skips too (the binary then reports "all skipped", exit 77)
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "common/test_util.h"

namespace {

bool env_is(const char* name) {
  const char* e = std::getenv(name);
  return e && std::string(e) == "1";
}

TEST(Planted, HostCheck) {
  if (env_is("QSERVE_PLANTED_ALL_SKIP")) GTEST_SKIP() << "planted skip";
  EXPECT_FALSE(env_is("QSERVE_PLANTED_FAILURE")) << "planted failure";
}

TEST(Planted, GpuPart) {
  QS_REQUIRE_GPU();
  if (env_is("QSERVE_PLANTED_ALL_SKIP")) GTEST_SKIP() << "planted skip";
  SUCCEED();
}

}  // namespace
