// Shared test helpers (see test_util.h).
#include "common/test_util.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/paths.h"
#ifdef QSERVE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace qs::test {

std::string data_path(const std::string& rel) { return qs::data_dir() + "/" + rel; }
bool data_available(const std::string& rel) { return std::filesystem::exists(data_path(rel)); }

double normalized_error(const float* out, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    const double d = double(out[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  if (den == 0) return num == 0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

std::vector<float> random_normal(size_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::string gpu_unavailable_reason() {
#ifdef QSERVE_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
  }
  return n > 0 ? "" : "no CUDA device";
#else
  return "built without CUDA";
#endif
}

bool gpu_available() { return gpu_unavailable_reason().empty(); }

bool gpu_required() {
  const char* e = std::getenv("QSERVE_REQUIRE_GPU");
  return e && std::string(e) == "1";
}

}  // namespace qs::test
