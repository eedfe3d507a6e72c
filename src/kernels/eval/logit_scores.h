// Per-token evaluation scores of FP32 logits rows on the GPU (perplexity / KL / top-1, quant/eval/perplexity.h), so
// an evaluation never copies a window's [seq_len, vocab] logits to the host. One CTA per row computes, in FP64:
//   nll[r]  = log sum_v exp(x[r, v]) - x[r, label[r]]                      (quant::eval::token_nll)
//   kl[r]   = KL(softmax(ref[r]) || softmax(x[r]))                          (quant::eval::kl_divergence)
//           = sum_v p_ref(v) (ref[r, v] - x[r, v]) - lse(ref[r]) + lse(x[r])   (the same sum, rearranged: sum p = 1)
//   top1[r] = argmax(ref[r]) == argmax(x[r]), each argmax the first maximum (quant::eval::argmax)
//   bad[r]  = number of non-finite values among x[r] and ref[r] (the host rejects the window when > 0)
// Both log-sum-exps are shifted by the row maximum and summed in double, as the host functions are; the results
// differ from the host's only by the summation order (< 1e-12 relative for vocabularies up to 2^20). Launch only
// (no allocation, no sync): graph-capturable. The per-row outputs are summed by the caller (sequentially, so the
// totals are deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/status.h"

namespace qs::kernels {

struct LogitScoreParams {
  const float* logits = nullptr;      // FP32 [rows][ld]: the first `vocab` values of each row are read
  int64_t ld = 0;                     // elements between rows (0: vocab)
  const float* ref_logits = nullptr;  // FP32 [rows][ref_ld] reference rows, or null (then kl / top1 are not written)
  int64_t ref_ld = 0;                 // (0: vocab)
  int32_t rows = 0;
  int32_t vocab = 0;
  const int32_t* labels = nullptr;  // [rows] the next token of each row, in [0, vocab) (out of range: nll = NaN)
  double* nll = nullptr;            // [rows]
  double* kl = nullptr;             // [rows], required with ref_logits
  uint8_t* top1 = nullptr;          // [rows], required with ref_logits
  int32_t* bad = nullptr;           // [rows] non-finite count (model + reference row)
};

// Launch only: one CTA per row. Returns an error naming the problem for a bad shape or a missing pointer.
Status score_logits(const LogitScoreParams& p, cudaStream_t stream);

}  // namespace qs::kernels
