// QoQ calibration: deterministic sampling of token windows from a text file, and layer-by-layer runs of a model
// over those windows that observe what the transformations and GPTQ need: per-channel max|X| of every linear
// input, the post-RoPE key maxima per KV channel (SmoothAttention), GPTQ Hessians H = 2/n X^T X, and a sample of
// MLP inputs (the down_proj smoothing grid search), and the post-RoPE queries, keys and values of a few windows
// (the SmoothAttention strength search). FP32 throughout.
//
// Layer by layer: the hidden states of all windows ([samples * len, hidden], F32) are kept in memory; run(layer)
// feeds them through one decoder layer (Model::forward_layer, a few windows per call), observing its linears
// through the model's ActivationObserver and its keys through the KV cache the layer writes (keys are stored
// after RoPE), and, when asked, replaces the hidden states by the layer's output for the next layer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "quant/gptq.h"
#include "tokenizer/tokenizer.h"

namespace qs::quant::qoq {

struct CalibrationSet {
  std::vector<std::vector<int32_t>> windows;  // samples x len token ids
  int64_t text_tokens = 0;                    // tokens in the whole text
};

// Tokenizes the text once (no BOS), cuts it into floor(tokens / len) disjoint windows and picks `samples` of them
// at random (std::mt19937_64(seed), without replacement), in text order. Throws a clear error when the text gives
// fewer than `samples` windows.
CalibrationSet sample_calibration(const tokenizer::Tokenizer& tok, const std::string& text, int samples, int len,
                                  uint64_t seed = 0);
CalibrationSet sample_calibration_file(const tokenizer::Tokenizer& tok, const std::string& path, int samples,
                                       int len, uint64_t seed = 0);

// The inputs of a layer's linears, grouped by who reads them (q/k/v share one input, gate/up another).
enum class LinearInput { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3 };
constexpr int kNumLinearInputs = 4;
const char* linear_input_name(LinearInput i);

struct CaptureOptions {
  bool absmax = true;     // per-channel max|X| of each input
  bool keys = true;       // post-RoPE key maxima
  bool hessians = false;  // GPTQ Hessians of each input
  // Hessians use every `hessian_stride`-th token of each window (1: all tokens).
  int hessian_stride = 1;
  // Keep this many rows of every linear input (the same tokens, evenly spaced over all tokens; 0: none).
  int64_t keep_rows = 0;
  // Attention sample for the SmoothAttention search: the post-RoPE keys and values of every position, and the
  // post-RoPE queries of `attn_queries` positions, of `attn_windows` windows (evenly spaced over the calibration
  // set). 0: none. Memory: attn_windows * (2 * len * kv_size + attn_queries * q_size) floats.
  int attn_windows = 0;
  int attn_queries = 0;
  // Polled between forward calls; when it returns true, run() throws qs::Error("interrupted").
  std::function<bool()> cancelled;
};

// Post-RoPE attention inputs of a few calibration windows of one layer (positions 0 .. len-1 in each window).
struct AttentionSample {
  int64_t windows = 0, len = 0;
  std::vector<int64_t> q_pos;  // [nq] positions of the sampled queries (the same in every window), ascending
  std::vector<float> q;        // [windows, nq, q_size]
  std::vector<float> k, v;     // [windows, len, kv_size]
  int64_t nq() const { return int64_t(q_pos.size()); }
};

struct LayerCapture {
  std::vector<float> absmax[kNumLinearInputs];  // per input channel
  std::vector<float> key_max;                   // [num_kv_heads * head_dim], after RoPE
  std::unique_ptr<HessianAccumulator> hessian[kNumLinearInputs];
  // Or the finished Hessians H = 2/n X^T X (K x K, double), as the GPU runner computes them.
  std::vector<double> hessian_full[kNumLinearInputs];
  Tensor rows[kNumLinearInputs];  // F32 [keep_rows, in_features] per input
  AttentionSample attn;           // empty unless attn_windows > 0
};

// A capture's Hessians (dense, K x K) and sample rows, in a form the pipeline can re-express for transformed
// weights (one calibration pass per layer: transformations that only scale and permute a linear's input channels
// are applied to the captured statistics instead of running the layer again).
struct LayerInputs {
  std::vector<double> hessian[kNumLinearInputs];  // empty when not captured
  Tensor rows[kNumLinearInputs];
};
LayerInputs take_inputs(LayerCapture& cap);  // moves the rows out of cap
// Input channel i of `which` becomes old channel perm[i] times f[perm[i]] (f empty: 1): the rows' columns and the
// Hessian's rows and columns (H'[i][j] = H[p_i][p_j] f[p_i] f[p_j]).
void permute_scale_input(LayerInputs& in, LinearInput which, const std::vector<int32_t>& perm,
                         const std::vector<float>& f);

// What the pipeline runs the calibration windows through, one decoder layer at a time: LayerRunner on the model's
// CPU backend, or the GPU runner (quant/cuda/layer_runner_cuda.h), which keeps the hidden states on the device.
class CalibrationRunner {
 public:
  virtual ~CalibrationRunner() = default;
  // Runs decoder layer `layer` over every window. advance = true replaces the hidden states by the layer's output.
  virtual LayerCapture run(int layer, const CaptureOptions& opt, bool advance) = 0;
  // The current hidden states [samples * len, hidden] on the host (the GPU runner copies them back first).
  virtual const std::vector<float>& hidden_host() = 0;
  virtual void set_hidden(const std::vector<float>& hidden) = 0;
};

class LayerRunner : public CalibrationRunner {
 public:
  // Embeds every window (the model's own embedding table, so transform the embeddings first).
  LayerRunner(model::Model& model, const CalibrationSet& set, int windows_per_call = 4);
  // Runs decoder layer `layer` over every window. advance = true replaces the hidden states by the layer's output.
  LayerCapture run(int layer, const CaptureOptions& opt, bool advance) override;
  const std::vector<float>& hidden_host() override { return hidden_; }
  void set_hidden(const std::vector<float>& hidden) override;
  // The current hidden states [samples * len, hidden].
  const std::vector<float>& hidden() const { return hidden_; }
  int64_t tokens() const { return samples_ * len_; }

 private:
  model::Model& model_;
  int64_t samples_, len_;
  int windows_per_call_;
  std::vector<float> hidden_;
};

}  // namespace qs::quant::qoq
