// GPU token sampling: one CTA per row of FP32 logits picks the next token with the semantics of the CPU sampler
// (model::Sampler::sample_at, model::argmax): greedy when temperature <= 0 (argmax, lowest id on ties), else divide
// by the temperature, keep the top_k largest (ties to the lower id), softmax, keep the smallest prefix whose mass
// reaches top_p, draw with u = model::sample_uniform(seed, step). Launch only (no allocation, no sync, no host
// work per row): graph-capturable.
//
// How (sampling.cu): every candidate is ordered by the 55-bit key (descending logit, ascending id), which is exactly
// the CPU's sort order, and the three choices (k-th largest; top-p cut; the draw) are each one radix select over that
// key: a pass builds a 2048-bucket histogram of the next 11-bit key digit among the elements still in play, the
// bucket where the running count (top-k) or probability mass (top-p, draw) reaches its target is kept; once it
// holds <= 1024 elements they are gathered into shared memory and the select finishes there. Probabilities are
// exp(double(l) / T - max / T) in FP64 (as the CPU), then held as 2^-43 fixed-point integers so that every mass sum
// is exact and independent of summation order (deterministic); the CPU's FP64 sums differ from these by < 1e-9
// relative, so a token differs from the CPU's only when u lands that close to a boundary (or the top-p cut is that
// close to a prefix's mass).
// Limits: vocab <= 2^20 (the fixed-point sums must fit 64 bits); any top_k (no cap: 0 or >= vocab means no
// filter); logits must be finite (NaN / inf: some token in [0, vocab) is returned, not necessarily the CPU's);
// the repetition penalty is not applied here (the caller applies it to the logits first, or uses the CPU sampler).
// Cost: greedy is one pass over the row. top_k <= 1024 (any top_p): 3-4 passes, no exp on the row (the kept set
// is gathered into shared memory). No top-k (or top_k > 1024): ~5-8 passes, three of them evaluating exp on the row
// (total mass, top-p histogram, draw histogram unless the nucleus has <= 1024 tokens and is gathered).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"

namespace qs::kernels {

struct SampleParams {
  const float* logits = nullptr;   // FP32 [rows][ld]: the first `vocab` values of each row are read
  int64_t ld = 0;                  // elements between rows (0: vocab)
  int32_t rows = 0;
  int32_t vocab = 0;
  // Per-row settings, device arrays [rows] (validated on the host: model::validate). nullptr = that setting's
  // default for every row: temperature 0 (greedy), top_k 0 (off), top_p 1 (off). seed/step are required when
  // temperature is given.
  const float* temperature = nullptr;
  const int32_t* top_k = nullptr;
  const float* top_p = nullptr;
  const uint64_t* seed = nullptr;  // the request's seed
  const uint64_t* step = nullptr;  // tokens the request has sampled before (model::sample_uniform's step)
  int32_t* out_token = nullptr;    // [rows] the chosen token
  // Optional [rows]: log-softmax of the raw logits (before temperature and filters) at the chosen token, in FP64
  // then rounded to FP32 (the OpenAI `logprobs` value). One extra pass over the row when given.
  float* out_logprob = nullptr;
};

// Launch only: one CTA per row. Returns an error naming the problem for a bad shape or missing pointer.
Status sample(const SampleParams& p, cudaStream_t stream);

}  // namespace qs::kernels
