// Streaming detokenization: feed ids one at a time, get back only the newly completed text. Bytes of a
// multi-byte UTF-8 character split over several tokens (byte-fallback <0xXX> pieces, byte-level pieces) are held
// back until the character is complete, so every returned string is valid UTF-8; invalid bytes come out as
// U+FFFD exactly as Tokenizer::decode writes them. The concatenation of every push() and the final flush()
// equals Tokenizer::decode of all the ids.
#pragma once

#include <string>

#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {

class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(Tokenizer tokenizer, bool skip_special_tokens = false)
      : tok_(std::move(tokenizer)), skip_special_(skip_special_tokens) {}

  // Text completed by this id ("" while a character is still incomplete). Throws qs::Error on a bad id.
  std::string push(int id);
  // Whatever is still held back (an incomplete character becomes U+FFFD); the decoder can then start over.
  std::string flush();

 private:
  Tokenizer tok_;
  bool skip_special_;
  DecodeState state_;
  std::string pending_;  // bytes not yet returned
};

}  // namespace qs::tokenizer
