// Token sampling from one row of logits: greedy, temperature, top-k, top-p (nucleus) and a repetition penalty
// (off by default), with a seeded std::mt19937_64 so that a given seed always yields the same tokens.
// Order of operations (as Hugging Face applies its logits processors): repetition penalty on the raw logits
// (CTRL rule: a seen token's logit l becomes l / p if l > 0, else l * p), then greedy if temperature <= 0;
// otherwise divide by the temperature, keep the top_k largest (ties broken by the lower id), softmax in double,
// keep the smallest prefix whose probability mass reaches top_p (at least one token), renormalize and draw.
// The random draw uses the top 53 bits of one mt19937_64 output (no implementation-defined distributions), so
// results are identical across standard libraries.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace qs::runtime {

struct SamplingParams {
  float temperature = 0.0f;         // <= 0: greedy
  int top_k = 0;                    // 0: no top-k filter
  float top_p = 1.0f;               // in (0, 1]; 1: no nucleus filter
  float repetition_penalty = 1.0f;  // > 0; 1: off
  uint64_t seed = 0;
};

// Throws qs::Error naming the bad field (negative top_k, top_p outside (0, 1], penalty <= 0, NaN temperature).
void validate(const SamplingParams& p);

// Index of the largest value; the lowest index among equal maxima.
int32_t argmax(const float* x, int64_t n);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Picks the next token from logits [vocab]; `history` (prompt and generated ids) feeds the repetition penalty.
  int32_t sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history);
  const SamplingParams& params() const { return p_; }

 private:
  double uniform();  // [0, 1)
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace qs::runtime
