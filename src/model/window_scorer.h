// WindowScorer: an optional capability of an executor (model/executor.h) for perplexity evaluation
// (quant/eval/perplexity.h): run one window and score its logits where they were computed, so a GPU executor never
// copies [seq_len, vocab] FP32 logits to the host. An executor that implements it also derives from
// model::Executor; the evaluation finds it with dynamic_cast and otherwise scores host logits itself.
//
// Scores are per predicting row r (label = the next token): NLL = -log softmax(logits_r)[label_r], and against a
// reference's logits of the same window KL(softmax(ref_r) || softmax(logits_r)) and top-1 agreement (each argmax
// the first maximum); the same per-row math as quant::eval::token_nll / kl_divergence / argmax, in FP64. A
// scorer may keep its window's logits (keep = true) for other scorers to use as the reference; they stay valid
// until its next score_window call. A scorer can only read kept logits that live in its own memory space
// (KeptLogits::device): it throws qs::Error naming the mismatch otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "model/forward_batch.h"

namespace qs::model {

class WindowScorer;

// Logits kept by a scorer: FP32 [rows, vocab], row-major, in device memory of CUDA device `device`.
struct KeptLogits {
  const WindowScorer* owner = nullptr;
  const float* data = nullptr;
  int64_t rows = 0, vocab = 0;
  int device = -1;
};

struct WindowScores {
  std::vector<double> nll;    // [rows]
  std::vector<double> kl;     // [rows], with a reference
  std::vector<uint8_t> top1;  // [rows], with a reference: 1 when the argmaxes agree
};

class WindowScorer {
 public:
  virtual ~WindowScorer() = default;
  // Runs `batch` (one sequence with all_logits, as quant::eval::window_logits builds it) and scores rows
  // 0 .. labels.size()-1 of its logits against labels (labels.size() <= the batch's tokens). `ref`: the reference's
  // kept logits of the same window (rows >= labels.size()), or null (no KL / top-1). keep: keep this window's
  // logits (every row) and return them from kept_logits(). Throws qs::Error on a non-finite logit (naming the row)
  // or a reference it cannot read.
  virtual WindowScores score_window(const ForwardBatch& batch, const std::vector<int32_t>& labels,
                                    const KeptLogits* ref, bool keep) = 0;
  // The logits the last score_window(keep = true) kept (data == nullptr when none).
  virtual KeptLogits kept_logits() const = 0;
};

}  // namespace qs::model
