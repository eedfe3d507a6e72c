// Strict parsing of the CLI's seed flags (generate --seed, make-random --seed, bench --seed, quantize
// --calib-seed). CLI11 reads an unsigned option with strtoull(base 0), which silently wraps "-1" to 2^64 - 1,
// clamps "99999999999999999999" to 2^64 - 1 and reads "010" as octal 8 (issue 13: seeds out of range silently
// clamped). A seed is a decimal integer in [0, 2^64 - 1]; anything else is a qs::Error naming the flag and the
// text ("error: ..." and exit status 1, before anything is loaded).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "core/error.h"

namespace qs::cli {

// The seed `text` of flag `flag`, or a qs::Error: only decimal digits (no sign, no spaces), at most 2^64 - 1.
inline uint64_t parse_seed(const std::string& text, const std::string& flag) {
  QS_CHECK(!text.empty() && text.size() <= 20 && text.find_first_not_of("0123456789") == std::string::npos)
      << flag << " must be a decimal integer in [0, 18446744073709551615], got '" << text << "'";
  uint64_t v = 0;
  for (char c : text) {
    const uint64_t d = uint64_t(c - '0');
    QS_CHECK(v <= (UINT64_MAX - d) / 10)
        << flag << " must be a decimal integer in [0, 18446744073709551615], got '" << text << "' (out of range)";
    v = v * 10 + d;
  }
  return v;
}

// Adds `flag` to `sub`, stored in *seed through parse_seed (the default stays when the flag is absent).
inline CLI::Option* add_seed_option(CLI::App* sub, const std::string& flag, uint64_t* seed, const std::string& help) {
  return sub->add_option_function<std::string>(
                flag, [seed, flag](const std::string& text) { *seed = parse_seed(text, flag); }, help)
      ->type_name("UINT64");
}

}  // namespace qs::cli
