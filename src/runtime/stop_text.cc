// Stop strings over streamed text (see stop_text.h).
#include "runtime/stop_text.h"

#include <algorithm>

#include "core/error.h"

namespace qs::runtime {

StopText::StopText(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_) {
    QS_CHECK(!s.empty()) << "empty stop string";
    longest_ = std::max(longest_, s.size());
  }
}

bool StopText::add(const std::string& piece) {
  if (stopped_ || piece.empty()) return stopped_;
  const size_t before = text_.size();
  text_ += piece;
  // A stop string may straddle earlier pieces: search from where it could start.
  const size_t from = before >= longest_ ? before - longest_ + 1 : 0;
  size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, text_.find(s, from));
  if (cut != std::string::npos) {
    text_.resize(cut);
    stopped_ = true;
  }
  return stopped_;
}

std::string StopText::take(bool final) {
  size_t safe = text_.size();
  if (!final && !stopped_) {
    // Hold back the longest suffix that begins some stop string.
    size_t hold = 0;
    for (const auto& s : stops_)
      for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; --k)
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    safe -= hold;
  }
  if (safe <= emitted_) return {};
  std::string out = text_.substr(emitted_, safe - emitted_);
  emitted_ = safe;
  return out;
}

}  // namespace qs::runtime
