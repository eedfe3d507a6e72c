// Fuzz target: tokenizer.json loading (Tokenizer::from_json) on arbitrary bytes; a tokenizer that loads then
// encodes and decodes a fixed text and decodes every id below a bound, which must not crash or throw anything but
// qs::Error.
#include <algorithm>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tok = qs::tokenizer::Tokenizer::from_json(std::string_view(reinterpret_cast<const char*>(data), size));
    const auto ids = tok.encode("Hello, world! 123 \xc3\xa9t\xc3\xa9 <s>\n  x");
    (void)tok.decode(ids);
    std::vector<int> all;
    for (int i = 0; i < std::min(tok.vocab_size(), 300); ++i) all.push_back(i);
    (void)tok.decode(all, /*skip_special_tokens=*/true);
  } catch (const qs::Error&) {
  }
  return 0;
}
