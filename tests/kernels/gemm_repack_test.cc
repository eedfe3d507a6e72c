// Bit-exact tests of the GEMM weight repacking (kernels/gemm_w4a8/repack.h): the repacked bytes, read the way
// the kernel reads them (16-byte lane loads, AND/shift unpack), must give exactly the mma.sync m16n8k32 A
// fragments of the canonical weights as the PTX ISA defines them (a0 = A[g][4t..], a1 = A[g+8][4t..],
// a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]); every canonical value lands exactly once.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/error.h"
#include "kernels/gemm_w4a8/repack.h"

namespace qs {
namespace {

using ::testing::HasSubstr;

// The canonical weight A[row][k] that fragment register r (0..3), byte b of `lane` holds for k32 step `step`
// of tile (nt, kg): PTX m16n8k32 A layout.
void fragment_coord(int64_t nt, int64_t kg, int step, int lane, int r, int b, int64_t* row, int64_t* k) {
  const int g = lane / 4, t = lane % 4;
  *row = nt * 16 + g + 8 * (r % 2);
  *k = kg * 128 + 32 * step + 16 * (r / 2) + 4 * t + b;
}

TEST(GemmRepack, W4FragmentsMatchCanonical) {
  const int64_t n = 48, k = 384;
  std::mt19937 rng(5);
  std::vector<uint8_t> q(size_t(n * k / 2));
  for (auto& v : q) v = uint8_t(rng());
  const std::vector<uint8_t> r = kernels::repack_w4(q.data(), n, k);
  ASSERT_EQ(r.size(), q.size());
  std::vector<int> seen(size_t(n * k), 0);
  for (int64_t nt = 0; nt < n / 16; ++nt)
    for (int64_t kg = 0; kg < k / 128; ++kg)
      for (int step = 0; step < 4; ++step)
        for (int lane = 0; lane < 32; ++lane) {
          // Kernel read: chunk = step / 2 (one 16-byte load per lane), words 2*(step%2) and +1.
          const uint8_t* ld = r.data() + (nt * (k / 128) + kg) * 1024 + ((step / 2) * 32 + lane) * 16;
          for (int half = 0; half < 2; ++half) {
            uint32_t w;
            std::memcpy(&w, ld + 4 * (2 * (step % 2) + half), 4);
            const uint32_t regs[2] = {w & 0x0f0f0f0fu, (w >> 4) & 0x0f0f0f0fu};  // (a0,a1) or (a2,a3)
            for (int rr = 0; rr < 2; ++rr)
              for (int b = 0; b < 4; ++b) {
                int64_t row, kk;
                fragment_coord(nt, kg, step, lane, 2 * half + rr, b, &row, &kk);
                const uint8_t byte = q[size_t(row * (k / 2) + kk / 2)];
                const uint8_t want = (kk & 1) ? byte >> 4 : byte & 0xf;
                ASSERT_EQ((regs[rr] >> (8 * b)) & 0xff, want) << "tile " << nt << "," << kg << " lane " << lane;
                ++seen[size_t(row * k + kk)];
              }
          }
        }
  for (int c : seen) ASSERT_EQ(c, 1);
}

TEST(GemmRepack, W8FragmentsMatchCanonical) {
  const int64_t n = 32, k = 256;
  std::mt19937 rng(6);
  std::vector<int8_t> q(size_t(n * k));
  for (auto& v : q) v = int8_t(rng());
  const std::vector<uint8_t> r = kernels::repack_w8(q.data(), n, k);
  ASSERT_EQ(r.size(), q.size());
  std::vector<int> seen(size_t(n * k), 0);
  for (int64_t nt = 0; nt < n / 16; ++nt)
    for (int64_t kg = 0; kg < k / 128; ++kg)
      for (int step = 0; step < 4; ++step)
        for (int lane = 0; lane < 32; ++lane) {
          const uint8_t* ld = r.data() + (nt * (k / 128) + kg) * 2048 + (step * 32 + lane) * 16;
          for (int reg = 0; reg < 4; ++reg)
            for (int b = 0; b < 4; ++b) {
              int64_t row, kk;
              fragment_coord(nt, kg, step, lane, reg, b, &row, &kk);
              ASSERT_EQ(int8_t(ld[4 * reg + b]), q[size_t(row * k + kk)]);
              ++seen[size_t(row * k + kk)];
            }
        }
  for (int c : seen) ASSERT_EQ(c, 1);
}

TEST(GemmRepack, S2ZnTransposedAndPacked) {
  const int64_t n = 16, k = 256;
  std::vector<uint8_t> s2(size_t(n * 2));
  std::vector<int8_t> zn(size_t(n * 2));
  for (int i = 0; i < n * 2; ++i) {
    s2[size_t(i)] = uint8_t(1 + i % 16);
    zn[size_t(i)] = int8_t(-i * 3);
  }
  const auto r = kernels::repack_s2zn(s2.data(), zn.data(), n, k);
  for (int64_t row = 0; row < n; ++row)
    for (int g = 0; g < 2; ++g) {
      EXPECT_EQ(r[size_t(g * n + row)] & 0xff, s2[size_t(row * 2 + g)]);
      EXPECT_EQ(int8_t(r[size_t(g * n + row)] >> 8), zn[size_t(row * 2 + g)]);
    }
}

TEST(GemmRepack, RejectsBadShapes) {
  std::vector<uint8_t> q(1024);
  EXPECT_THAT([&] { kernels::repack_w4(q.data(), 8, 128); },
              ::testing::ThrowsMessage<Error>(HasSubstr("N=8 must be a positive multiple of 16")));
  EXPECT_THAT([&] { kernels::repack_w8(reinterpret_cast<int8_t*>(q.data()), 16, 64); },
              ::testing::ThrowsMessage<Error>(HasSubstr("K=64 must be a positive multiple of 128")));
}

}  // namespace
}  // namespace qs
