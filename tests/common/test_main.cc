// The main() of every test binary (instead of gtest_main), so that ctest can tell a pass from a skip from a failure
// by the exit code alone:
//   1  any test failed (also when others were skipped: a skip never hides a failure);
//   77 nothing failed and nothing ran: every test skipped itself (no GPU, no data), which ctest shows as
//      "skipped" through SKIP_RETURN_CODE 77 (CMakeLists.txt);
//   0  otherwise.
// GPU-required mode (QSERVE_REQUIRE_GPU=1, used by scripts/gpu-check on the GPU machine): QS_REQUIRE_GPU fails
// instead of skipping, and any skipped test makes the binary fail, so a broken driver cannot pass as "skipped".
#include <gtest/gtest.h>

#include <cstdio>

#include "common/test_util.h"

namespace {

class Counter : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo& info) override {
    const auto* r = info.result();
    if (r->Failed()) ++failed;
    else if (r->Skipped()) ++skipped;
    else ++passed;
  }
  int passed = 0, failed = 0, skipped = 0;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto* counter = new Counter;  // owned by gtest
  ::testing::UnitTest::GetInstance()->listeners().Append(counter);
  const int rc = RUN_ALL_TESTS();
  if (rc != 0 || counter->failed > 0) return 1;
  if (qs::test::gpu_required() && counter->skipped > 0) {
    std::fprintf(stderr, "QSERVE_REQUIRE_GPU=1: %d test(s) skipped, which counts as a failure in this mode\n",
                 counter->skipped);
    return 1;
  }
  if (counter->passed == 0 && counter->skipped > 0) return 77;
  return 0;
}
