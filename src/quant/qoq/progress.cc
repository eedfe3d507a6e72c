// Terminal progress bar (see progress.h).
#include "quant/qoq/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace qs::quant::qoq {

std::string format_duration(double s) {
  const long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

Progress::Progress(double total_units, bool enabled)
    : total_(std::max(total_units, 1e-9)), on_(enabled && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() {
  if (on_ && !finished_) std::fputc('\n', stderr);
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::advance(double units, const std::string& label) {
  done_ = std::min(total_, done_ + units);
  draw(label);
}

void Progress::finish() {
  done_ = total_;
  draw("done");
  if (on_) std::fputc('\n', stderr);
  finished_ = true;
}

void Progress::draw(const std::string& label) {
  if (!on_) return;
  constexpr int kWidth = 30;
  const double f = done_ / total_;
  const int fill = int(f * kWidth);
  std::string bar(size_t(fill), '#');
  bar.resize(kWidth, '.');
  const double el = elapsed_seconds();
  const std::string eta = done_ > 0 && f < 1.0 ? format_duration(el * (total_ - done_) / done_) : "-";
  std::fprintf(stderr, "\r[%s] %3d%%  %s elapsed, ETA %s  %-40s", bar.c_str(), int(f * 100 + 0.5),
               format_duration(el).c_str(), eta.c_str(), label.substr(0, 40).c_str());
  std::fflush(stderr);
}

}  // namespace qs::quant::qoq
