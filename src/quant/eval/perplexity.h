// Perplexity and fidelity evaluation of (quantized) models, GPTQ protocol: the dataset text is tokenized once
// with BOS, cut into non-overlapping windows of seq_len tokens (floor(n / seq_len) of them; the tail is
// dropped), each window runs from a fresh KV cache with no BOS of its own, and the loss is the cross entropy of
// positions 1..seq_len-1 given their prefixes. Perplexity = exp(total NLL / number of predicted tokens), which
// equals GPTQ's exp(mean over windows of the window's mean loss) since all windows have equal length.
// Against a reference model (the FP source of a quantized one), for the same predicting positions 0..seq_len-2:
// KL divergence KL(P_ref || P_model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v)), averaged over tokens, and
// top-1 agreement (argmax equal; ties broken toward the smaller id). All softmax math in double.
// Several models can be evaluated in one pass so the reference's logits are computed once per window.
// Every model runs behind the executor seam (model/executor.h): one ForwardBatch per window with all_logits, the
// window's pages 0 .. ceil(seq_len / page_size)-1 assigned here (each window overwrites the previous one), so the
// same code evaluates the CPU reference (model/ref) and the GPU runner (which scores on the device, see
// EvalOptions::device_scores). KV4 follows the fake-quantized
// protocol by default (ForwardBatch::quantized_self_kv: every key and value read back quantized, as QoQ's
// evaluation does); EvalOptions::quantized_self_kv = false measures the serving rule instead (a prefill sees its
// own K/V unquantized).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/executor.h"
#include "model/ref/ref_executor.h"
#include "tokenizer/tokenizer.h"

namespace qs::quant::eval {

// ---- per-position math (exposed for tests) ----
// -log softmax(logits)[label], in double.
double token_nll(const float* logits, int64_t vocab, int64_t label);
// KL(softmax(ref) || softmax(model)), in double (>= 0 up to rounding).
double kl_divergence(const float* ref_logits, const float* model_logits, int64_t vocab);
// Index of the largest logit (the first one on ties).
int64_t argmax(const float* logits, int64_t vocab);

// ---- dataset ----
// Tokenizes `text` once with the tokenizer's special tokens (BOS first when the tokenizer adds one).
std::vector<int32_t> tokenize_dataset(const tokenizer::Tokenizer& tok, const std::string& text);
// Number of full windows: floor(n_tokens / seq_len), capped by max_windows when > 0.
int64_t num_windows(int64_t n_tokens, int64_t seq_len, int64_t max_windows);

// ---- evaluation ----
struct EvalModel {
  std::string label;                    // printed name (checkpoint path, "fp32", ...)
  model::Executor* executor = nullptr;  // not owned; holds a window: window_executor_options() for a RefExecutor
};

struct EvalResult {
  std::string label;
  int64_t windows = 0;
  int64_t tokens = 0;       // predicted tokens: windows * (seq_len - 1)
  double nll_sum = 0;       // total NLL (nats)
  double ppl = 0;           // exp(nll_sum / tokens)
  bool has_reference = false;
  double kl_sum = 0;        // sum over tokens of KL(ref || model)
  double kl_mean = 0;       // kl_sum / tokens
  int64_t top1_agree = 0;   // tokens whose argmax equals the reference's
  double top1 = 0;          // top1_agree / tokens
  double seconds = 0;       // wall time spent in this model's forward passes
};

struct EvalOptions {
  int64_t seq_len = 2048;
  int64_t max_windows = 0;  // 0: all windows
  bool quantized_self_kv = true;  // KV4: the fake-quantized protocol (ForwardBatch::quantized_self_kv)
  // Score on the executors' device when every executor (models and reference) is a model::WindowScorer (the GPU
  // runner): logits stay on the GPU, the reference's are kept there for the models; the per-position math is the
  // same as below in FP64 (kernels/eval/logit_scores.h). false: always copy the logits to the host and score here.
  bool device_scores = true;
  // Called after each window with (windows done, windows total).
  std::function<void(int64_t, int64_t)> progress;
};

// Evaluates every model of `models` on `tokens`; with a reference, also KL and top-1 agreement vs its
// logits (the reference's own perplexity is returned as the last result). Throws on seq_len < 2, no full window
// or a token id outside a model's vocabulary.
std::vector<EvalResult> evaluate(const std::vector<int32_t>& tokens, const std::vector<EvalModel>& models,
                                 const EvalModel* reference, const EvalOptions& opt);

// The logits of one window [n, vocab] from an empty context: one ForwardBatch of n tokens with all_logits in pages
// 0 .. ceil(n / page_size)-1 of the executor's pool (exposed for tests and for KL tooling). Throws naming the
// executor when its pool or batch limit cannot hold the window.
Tensor window_logits(model::Executor& ex, const int32_t* ids, int64_t n, bool quantized_self_kv = true);

// Options of a RefExecutor that holds exactly one window of seq_len tokens (page size 64, one sequence).
model::RefExecutorOptions window_executor_options(KvDType kv, int64_t seq_len);

}  // namespace qs::quant::eval
