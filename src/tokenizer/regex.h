// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available) for the tokenizer's Split
// pre-tokenizers and Replace normalizers; find_all lists every non-empty match left to right. Matching is
// thread-safe (match data is per call).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qs::tokenizer {

class Regex {
 public:
  // literal=true matches `pattern` as plain text. Throws qs::Error naming `what` and the offset on a bad pattern.
  Regex(const std::string& pattern, bool literal, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) byte ranges of the non-empty matches in `text` (valid UTF-8).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code*
};

}  // namespace qs::tokenizer
