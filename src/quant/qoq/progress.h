// A one-line progress bar with ETA on stderr, drawn only when stderr is a terminal (logs and pipes stay clean).
// Work is counted in caller-defined units; ETA = elapsed * (total - done) / done.
#pragma once

#include <chrono>
#include <string>

namespace qs::quant::qoq {

class Progress {
 public:
  // enabled && isatty(stderr) decides whether anything is drawn.
  Progress(double total_units, bool enabled);
  ~Progress();
  // Adds `units` of finished work and redraws with `label` (what runs next).
  void advance(double units, const std::string& label);
  void finish();  // draws 100% and ends the line
  double elapsed_seconds() const;

 private:
  void draw(const std::string& label);
  double total_, done_ = 0.0;
  bool on_, finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

// "1h02m", "3m07s", "12s".
std::string format_duration(double seconds);

}  // namespace qs::quant::qoq
