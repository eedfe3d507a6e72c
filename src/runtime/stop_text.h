// Stop strings over streamed text: the generated text grows piece by piece (incremental detokenization); once a
// stop string appears the text is cut before it and the request stops. While running, only text that can no
// longer become the start of a stop string is released: the longest suffix that is a prefix of some stop string
// is held back (so a stop string is never emitted, not even in part). Used by the engine per request.
#pragma once

#include <string>
#include <vector>

namespace qs::runtime {

class StopText {
 public:
  explicit StopText(std::vector<std::string> stops = {});

  // Appends newly decoded text. Returns true when a stop string is now complete (the text is then cut before its
  // first occurrence, and later pieces are ignored).
  bool add(const std::string& piece);
  // The newly final text since the last take(): everything when `final` or stopped, else all but the held-back
  // suffix.
  std::string take(bool final);

  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;
  size_t emitted_ = 0;
  bool stopped_ = false;
};

}  // namespace qs::runtime
