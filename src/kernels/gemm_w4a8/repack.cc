// Weight repacking for the INT8 tensor-core GEMM (see repack.h for the exact layouts). Host code, no CUDA.
#include "kernels/gemm_w4a8/repack.h"

#include "core/error.h"

namespace qs::kernels {
namespace {

void check_shape(const char* what, int64_t n, int64_t k) {
  QS_CHECK(n > 0 && n % 16 == 0) << what << ": N=" << n << " must be a positive multiple of 16";
  QS_CHECK(k > 0 && k % 128 == 0) << what << ": K=" << k << " must be a positive multiple of 128";
}

}  // namespace

std::vector<uint8_t> repack_w4(const uint8_t* q, int64_t n, int64_t k) {
  check_shape("repack_w4", n, k);
  const int64_t kgs = k / 128;
  std::vector<uint8_t> out(size_t(n * k / 2));
  auto nib = [&](int64_t r, int64_t c) -> uint8_t {
    const uint8_t b = q[r * (k / 2) + c / 2];
    return (c & 1) ? uint8_t(b >> 4) : uint8_t(b & 0xf);
  };
  for (int64_t nt = 0; nt < n / 16; ++nt)
    for (int64_t kg = 0; kg < kgs; ++kg) {
      uint8_t* tile = out.data() + (nt * kgs + kg) * 1024;
      for (int c = 0; c < 2; ++c)
        for (int lane = 0; lane < 32; ++lane)
          for (int j = 0; j < 4; ++j)
            for (int b = 0; b < 4; ++b) {
              const int g = lane / 4, t = lane % 4;
              const int64_t kk = kg * 128 + 32 * (2 * c + j / 2) + 16 * (j % 2) + 4 * t + b;
              tile[(c * 32 + lane) * 16 + j * 4 + b] =
                  uint8_t(nib(nt * 16 + g, kk) | (nib(nt * 16 + g + 8, kk) << 4));
            }
    }
  return out;
}

std::vector<uint8_t> repack_w8(const int8_t* q, int64_t n, int64_t k) {
  check_shape("repack_w8", n, k);
  const int64_t kgs = k / 128;
  std::vector<uint8_t> out(size_t(n * k));
  for (int64_t nt = 0; nt < n / 16; ++nt)
    for (int64_t kg = 0; kg < kgs; ++kg) {
      uint8_t* tile = out.data() + (nt * kgs + kg) * 2048;
      for (int s = 0; s < 4; ++s)
        for (int lane = 0; lane < 32; ++lane)
          for (int j = 0; j < 4; ++j)
            for (int b = 0; b < 4; ++b) {
              const int g = lane / 4, t = lane % 4;
              const int64_t row = nt * 16 + g + 8 * (j % 2);
              const int64_t kk = kg * 128 + 32 * s + 16 * (j / 2) + 4 * t + b;
              tile[(s * 32 + lane) * 16 + j * 4 + b] = uint8_t(q[row * k + kk]);
            }
    }
  return out;
}

std::vector<uint16_t> repack_s2zn(const uint8_t* s2, const int8_t* zn, int64_t n, int64_t k) {
  check_shape("repack_s2zn", n, k);
  const int64_t kgs = k / 128;
  std::vector<uint16_t> out(size_t(n * kgs));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < kgs; ++g)
      out[size_t(g * n + r)] = uint16_t(s2[r * kgs + g] | (uint16_t(uint8_t(zn[r * kgs + g])) << 8));
  return out;
}

}  // namespace qs::kernels
