// Token sampling (see sampling.h).
#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace qs::model {

void validate(const SamplingParams& p) {
  QS_CHECK(std::isfinite(p.temperature) && p.temperature >= 0.0f)
      << "sampling: temperature must be a finite number >= 0 (0: greedy), got " << p.temperature;
  QS_CHECK(p.top_k >= 0) << "sampling: top_k must be >= 0, got " << p.top_k;
  QS_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f) << "sampling: top_p must be in (0, 1], got " << p.top_p;
  QS_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0f)
      << "sampling: repetition_penalty must be a finite number > 0, got " << p.repetition_penalty;
}

int32_t argmax(const float* x, int64_t n) {
  QS_CHECK(n > 0) << "argmax of an empty row";
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

double sample_uniform(uint64_t seed, uint64_t step) {
  uint64_t z = seed + (step + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

Sampler::Sampler(const SamplingParams& p) : p_(p) { validate(p_); }

int32_t Sampler::sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history) {
  return sample_at(logits, vocab, history, step_++);
}

int32_t Sampler::sample_at(const float* logits, int64_t vocab, const std::vector<int32_t>& history,
                           uint64_t step) const {
  QS_CHECK(vocab > 0) << "sampling: empty logits";
  std::vector<float> l(logits, logits + vocab);
  if (p_.repetition_penalty != 1.0f) {
    std::vector<bool> seen(static_cast<size_t>(vocab), false);
    for (int32_t id : history)
      if (id >= 0 && id < vocab) seen[static_cast<size_t>(id)] = true;
    for (int64_t i = 0; i < vocab; ++i)
      if (seen[static_cast<size_t>(i)]) {
        float& v = l[static_cast<size_t>(i)];
        v = v > 0 ? v / p_.repetition_penalty : v * p_.repetition_penalty;
      }
  }
  if (p_.temperature <= 0.0f) return argmax(l.data(), vocab);

  // Candidates by decreasing logit, ties by id.
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    const float la = l[static_cast<size_t>(a)], lb = l[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  size_t keep = idx.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < keep) {
    keep = size_t(p_.top_k);
    std::partial_sort(idx.begin(), idx.begin() + std::ptrdiff_t(keep), idx.end(), by_logit);
  } else {
    std::sort(idx.begin(), idx.end(), by_logit);
  }
  idx.resize(keep);

  const double inv_t = 1.0 / double(p_.temperature);
  const double mx = double(l[static_cast<size_t>(idx[0])]) * inv_t;
  std::vector<double> prob(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += prob[i] = std::exp(double(l[static_cast<size_t>(idx[i])]) * inv_t - mx);
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    size_t n = 0;
    while (n < keep) {
      cum += prob[n++] / total;
      if (cum >= double(p_.top_p)) break;
    }
    keep = n;
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += prob[i];
  }
  const double u = sample_uniform(p_.seed, step) * total;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += prob[i];
    if (u < cum) return idx[i];
  }
  return idx[keep - 1];  // u within rounding of the total
}

}  // namespace qs::model
