// Shared test helpers: locating ../shared/data (QSERVE_DATA), skipping cleanly when data or a GPU is absent,
// deterministic random inputs and the normalized-error metric of the tolerance policy (TESTING.md).
#pragma once

#include <gtest/gtest.h>

#include "core/error.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace qs::test {

// Path of a file below the data directory, e.g. data_path("models/qs-llama-tiny").
std::string data_path(const std::string& rel);
bool data_available(const std::string& rel);

// ||out - ref|| / ||ref|| (L2), in double precision. Returns +inf if any output is NaN or inf.
double normalized_error(const float* out, const float* ref, size_t n);
inline double normalized_error(const std::vector<float>& out, const std::vector<float>& ref) {
  EXPECT_EQ(out.size(), ref.size());
  return normalized_error(out.data(), ref.data(), std::min(out.size(), ref.size()));
}

std::vector<float> random_normal(size_t n, uint64_t seed, float stddev = 1.0f);

// The message of the qs::Error that fn() throws, or "(no error)": bad-input tests assert on it.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const qs::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// True when a CUDA device is usable (always false in a build without CUDA).
bool gpu_available();
// Why no GPU is usable ("" when one is): the CUDA error (a driver too old, no device) or "built without CUDA".
std::string gpu_unavailable_reason();
// GPU-required mode: the environment variable QSERVE_REQUIRE_GPU=1 (scripts/gpu-check sets it). A GPU test that
// would skip fails instead, and test_main.cc turns any skip into a failing exit code.
bool gpu_required();

}  // namespace qs::test

// Skips the current test with a message when the shared data file/folder `rel` is absent.
#define QS_REQUIRE_DATA(rel)                                                                          \
  do {                                                                                                \
    if (!::qs::test::data_available(rel))                                                             \
      GTEST_SKIP() << "test data not found: " << ::qs::test::data_path(rel) << " (set QSERVE_DATA)"; \
  } while (0)

// Skips the current test when no GPU is usable; fails it instead in GPU-required mode (QSERVE_REQUIRE_GPU=1).
#define QS_REQUIRE_GPU()                                                                                  \
  do {                                                                                                    \
    if (!::qs::test::gpu_available()) {                                                                   \
      if (::qs::test::gpu_required())                                                                     \
        GTEST_FAIL() << "QSERVE_REQUIRE_GPU=1 but no usable CUDA GPU: " << ::qs::test::gpu_unavailable_reason(); \
      GTEST_SKIP() << "no CUDA GPU on this machine (" << ::qs::test::gpu_unavailable_reason()             \
                   << "): GPU test skipped";                                                              \
    }                                                                                                     \
  } while (0)
