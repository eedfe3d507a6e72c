// Token sampling from one row of logits: greedy, temperature, top-k, top-p (nucleus) and a repetition penalty
// (off by default), with a seeded std::mt19937_64 so that a given seed always yields the same tokens.
// Order of operations (as Hugging Face applies its logits processors): repetition penalty on the raw logits
// (CTRL rule: a seen token's logit l becomes l / p if l > 0, else l * p), then greedy if temperature <= 0;
// otherwise divide by the temperature, keep the top_k largest (ties broken by the lower id), softmax in double,
// keep the smallest prefix whose probability mass reaches top_p (at least one token), renormalize and draw.
// The random draw is counter-based, so any executor (CPU or GPU) reproduces it from (seed, step) alone:
// u = top 53 bits of splitmix64(seed + (step + 1) * 0x9E3779B97F4A7C15) / 2^53, where `step` counts the tokens
// this request has sampled before (sample_uniform below). Same seed, same tokens, alone or in any batch.
#pragma once

#include <cstdint>
#include <vector>

namespace qs::model {

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy; negative or non-finite: rejected by validate()
  int top_k = 0;                    // 0: no top-k filter
  float top_p = 1.0f;               // in (0, 1]; 1: no nucleus filter
  float repetition_penalty = 1.0f;  // > 0; 1: off
  uint64_t seed = 0;
};

// Throws qs::Error naming the bad field (negative top_k, top_p outside (0, 1], penalty <= 0 or not finite,
// temperature negative or not finite: 0 is greedy, a negative value is a mistake, not a synonym).
void validate(const SamplingParams& p);

// The uniform draw in [0, 1) for sample number `step` of a request seeded with `seed` (see the header comment).
double sample_uniform(uint64_t seed, uint64_t step);

// Index of the largest value; the lowest index among equal maxima.
int32_t argmax(const float* x, int64_t n);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Picks the next token from logits [vocab]; `history` (prompt and generated ids) feeds the repetition penalty.
  int32_t sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history);
  // The same pick for sample number `step` of the request (stateless; sample() uses and advances its own count).
  int32_t sample_at(const float* logits, int64_t vocab, const std::vector<int32_t>& history, uint64_t step) const;
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  uint64_t step_ = 0;
};

}  // namespace qs::model
