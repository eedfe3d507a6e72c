// Shared helpers of the libFuzzer targets (tests/fuzz/*_fuzz.cc, built by scripts/fuzz): a per-process scratch
// folder in /dev/shm (or /tmp) and writing the input to a file there. A target returns normally for qs::Error
// (bad input rejected cleanly: the expected outcome); any other exception, crash, leak, sanitizer report, hang
// (-timeout) or memory blow-up (-rss_limit_mb) is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace qs::fuzz {

inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    auto d = base / ("qserve_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& p, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
}

}  // namespace qs::fuzz
