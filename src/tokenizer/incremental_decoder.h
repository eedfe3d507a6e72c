// Streaming detokenization: feed ids one at a time, get back only the newly completed text. Bytes of a
// multi-byte UTF-8 character split over several tokens (byte-fallback <0xXX> pieces, byte-level pieces) are held
// back until the character is complete, so every returned string is valid UTF-8; invalid bytes come out as
// U+FFFD exactly as Tokenizer::decode writes them. The concatenation of every push() and the final flush()
// equals Tokenizer::decode of all the ids (with continues_text: the decode of prompt + ids, minus the prompt's
// text).
#pragma once

#include <string>

#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {

class IncrementalDecoder {
 public:
  // continues_text: the ids continue text that came before (the prompt), so a decoder that drops the leading
  // space of a text (SentencePiece-style "▁Hello" -> "Hello", Llama-2 / Mistral) must not drop it here:
  // generated "▁brown" after the prompt "The quick" streams as " brown". Pass true when streaming a completion.
  explicit IncrementalDecoder(Tokenizer tokenizer, bool skip_special_tokens = false, bool continues_text = false)
      : tok_(std::move(tokenizer)), skip_special_(skip_special_tokens), continues_text_(continues_text) {
    reset_state();
  }

  // Text completed by this id ("" while a character is still incomplete). Throws qs::Error on a bad id.
  std::string push(int id);
  // Whatever is still held back (an incomplete character becomes U+FFFD); the decoder can then start over.
  std::string flush();

 private:
  void reset_state() {
    state_ = DecodeState();
    if (continues_text_) state_.strip_left = 0;
  }

  Tokenizer tok_;
  bool skip_special_;
  bool continues_text_;
  DecodeState state_;
  std::string pending_;  // bytes not yet returned
};

}  // namespace qs::tokenizer
