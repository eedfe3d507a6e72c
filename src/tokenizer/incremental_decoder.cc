// Streaming detokenization (see incremental_decoder.h). Cutting the byte stream just before the lead byte of an
// incomplete character keeps the U+FFFD repair identical to repairing the whole stream at once (a lead byte can
// never continue an earlier invalid sequence).
#include "tokenizer/incremental_decoder.h"

#include "tokenizer/utf8.h"

namespace qs::tokenizer {

std::string IncrementalDecoder::push(int id) {
  tok_.append_token_bytes(id, skip_special_, state_, pending_);
  const size_t keep = incomplete_utf8_tail(pending_);
  std::string out = repair_utf8(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string IncrementalDecoder::flush() {
  std::string out = repair_utf8(pending_);
  pending_.clear();
  reset_state();
  return out;
}

}  // namespace qs::tokenizer
