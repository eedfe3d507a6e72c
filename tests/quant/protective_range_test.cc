// Derives the protective range P of the progressive g128 format by exhaustive search (docs/QUANTIZATION.md):
// for every integer group range [mn, mx] within [-P, P] and every level-1 value the quantizer can be handed,
// the level-2 code q4 must satisfy q4 * s2 <= 255 (the packed 32-bit multiply never carries into the next
// byte) and (q4 - z) * s2 in [-128, 127] (the byte-wise add of zn wraps to the true INT8). The largest such P,
// computed with the exact rules of weight_quant.h, must equal kProtectiveRange.
#include <gtest/gtest.h>

#include "quant/weight_quant.h"

namespace qs::quant {
namespace {

// Checks the ranges within [-p, p] that touch its boundary (those within [-(p-1), p-1] were checked for p-1);
// `clamp_to_group` false models a quantizer that would let any q4 in 0..15 through (no clamp of the level-1
// value into the group range).
bool boundary_ranges_safe(int p, bool clamp_to_group, std::string* why) {
  for (int mn = -p; mn <= p; ++mn)
    for (int mx = mn; mx <= p; ++mx) {
      if (mn != -p && mx != p) continue;
      const G128GroupParams g = g128_group_params(mn, mx);
      for (int v = -127; v <= 127; ++v) {
        const int q4 = clamp_to_group ? g128_quantize(v, g)
                                      : std::clamp(fmt4::round_even(float(v) / g.s2) + g.zero, 0, 15);
        const int true8 = (q4 - g.zero) * g.s2;
        if (q4 * g.s2 > 255 || true8 < -128 || true8 > 127 ||
            int(fmt4::dequant_w4_g128_to_int8(uint8_t(q4), g.s2, g.zn)) != true8) {
          if (why)
            *why = "range [" + std::to_string(mn) + ", " + std::to_string(mx) + "] s2=" + std::to_string(g.s2) +
                   " z=" + std::to_string(g.zero) + " q4=" + std::to_string(q4) + " -> " + std::to_string(true8);
          return false;
        }
      }
    }
  return true;
}

int largest_safe_range(bool clamp_to_group, std::string* why) {
  int p = 0;
  while (p < 127 && boundary_ranges_safe(p + 1, clamp_to_group, why)) ++p;
  return p;
}

TEST(ProtectiveRange, ExhaustiveDerivationGives119) {
  std::string why;
  EXPECT_EQ(largest_safe_range(true, &why), kProtectiveRange);
  // The first failure one step above: [-119, 120] has s2 = rne(239/15) = 16, z = rne(119/16 = 7.44) = 7, and
  // v = 120 rounds to 8 + 7 = 15, whose true value (15 - 7) * 16 = 128 does not fit INT8.
  EXPECT_EQ(why, "range [-119, 120] s2=16 z=7 q4=15 -> 128");
}

TEST(ProtectiveRange, WithoutGroupClampOnly116IsSafe) {
  // Why weight_quant.h clamps level-1 values into the group range: GPTQ updates may push later columns past
  // the range the group's parameters were computed from; if every q4 in 0..15 could occur, P would be 116.
  std::string why;
  EXPECT_EQ(largest_safe_range(false, &why), 116);
  EXPECT_EQ(why, "range [-117, 116] s2=16 z=7 q4=15 -> 128");
}

}  // namespace
}  // namespace qs::quant
