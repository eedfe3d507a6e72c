// The QoQ pipeline (QSERVE.md section 2): an FP32 Llama-family model -> output-preserving transformations ->
// layer-by-layer calibration -> W4 weight quantization (clipping search + GPTQ with the per-channel or the
// progressive g128 quantizer) -> a qserve quantized checkpoint (quant/checkpoint.h). Every step has a switch for
// ablations; QoqOptions::rtn() turns them all off (round-to-nearest on the untransformed model).
//
// Order per model: fold RMSNorms, rotate the residual stream and the value heads (no calibration needed), embed
// the calibration windows; then per decoder layer: (1) a statistics pass (max|X| per input channel, post-RoPE key
// maxima), (2) SmoothAttention, down_proj smoothing (given or grid-searched alpha/beta), reordering (g128),
// (3) a second pass through the transformed layer that accumulates the GPTQ Hessians, keeps sample rows for the
// clipping search and error report, and advances the hidden states to the layer's FP output, (4) quantization
// of the layer's seven linears. The model keeps its transformed FP32 weights; the quantized weights are returned.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "model/model.h"
#include "quant/checkpoint.h"
#include "quant/gptq.h"
#include "quant/qoq/calibration.h"
#include "quant/qoq/progress.h"
#include "quant/qoq/transforms.h"

namespace qs::quant::qoq {

struct QoqOptions {
  WeightFormat variant = WeightFormat::kW4A8G128;  // kW4PerChannel or kW4G128
  bool rotate = true;          // RMSNorm folding + residual Hadamard + per-head v/o Hadamard
  bool smooth_attn = true;     // SmoothAttention
  bool smooth_down = true;     // down_proj smoothing
  bool reorder = true;         // channel reordering (g128 only; ignored for per-channel)
  bool clip = true;            // clipping search (per-channel only)
  bool gptq = true;            // GPTQ (else round to nearest)
  float smooth_attn_alpha = 0.5f;  // used when smooth_attn_search is off
  // Search alpha per layer (per KV head when smooth_attn_per_head) by the KV4 attention-output error on
  // smooth_attn_windows windows x smooth_attn_queries queries (smooth_attention_search.h).
  bool smooth_attn_search = true;
  bool smooth_attn_per_head = true;
  int smooth_attn_windows = 4, smooth_attn_queries = 128;
  // Down_proj smoothing exponents; negative = the variant's default (Llama-3-8B's: 0.1/0.9 per-channel,
  // 0.3/0.7 g128).
  float smooth_down_alpha = -1.0f, smooth_down_beta = -1.0f;
  bool smooth_down_search = false;  // grid-search (alpha, beta) by MLP output MSE instead
  int calib_samples = 128, calib_len = 1024;
  uint64_t calib_seed = 0;
  int hessian_stride = 1;       // Hessians from every n-th calibration token
  int64_t sample_rows = 128;    // tokens kept per linear input: clipping search, smoothing grid search, report
  int clip_steps = 80;
  GptqOptions gptq_options;
  int windows_per_call = 4;     // calibration windows per forward_layer call
  // Inputs of layer l+1: the output of layer l with its weights replaced by their dequantized values (true:
  // GPTQ's original scheme; one more forward pass per layer), or its FP output (false).
  bool propagate_quantized = true;
  // Calibration on the GPU (quant/cuda: the layer forward, Hessians and GPTQ's heavy parts); false: the CPU backend.
  bool cuda = false;
  bool progress = true;         // progress bar on stderr (only when stderr is a terminal)
  std::function<bool()> cancelled;  // polled often; true makes run_qoq throw qs::Error("interrupted")

  static QoqOptions rtn(WeightFormat v);  // every step off
  float down_alpha() const;
  float down_beta() const;
  nlohmann::json to_json() const;  // every setting, for the checkpoint metadata
};

// Per-linear quantization report: relative output error ||X (W - Wq)^T|| / ||X W^T|| on the sample rows.
struct LinearReport {
  std::string name;
  int64_t n = 0, k = 0;
  double rel_error = 0.0;
  float mean_clip = 1.0f;  // mean clip ratio (per-channel with clipping), 1 otherwise
};
struct LayerReport {
  int layer = 0;
  float down_alpha = 0.0f, down_beta = 0.0f;  // the smoothing exponents used (searched or given)
  std::vector<float> attn_alpha;  // SmoothAttention exponent per KV head (empty: SmoothAttention off)
  // Relative KV4 attention-output error on the search sample (sqrt(err / ||FP out||^2)); -1 when not searched:
  // with the chosen alphas, with alpha 0.5 and with no smoothing.
  double attn_err = -1.0, attn_err_half = -1.0, attn_err_none = -1.0;
  // Diagnostics on the same sample: with the chosen scales, KV4 keys only / KV4 values only; and KV4 values
  // only with a per-channel value smoothing probe (v_j / vmax_j^0.5 before KV4, times it after).
  double attn_err_k = -1.0, attn_err_v = -1.0, attn_err_v_smooth = -1.0;
  double seconds = 0.0;
  // Wall time of the phases: calibration pass, transformations with their searches, quantization (GPTQ + the
  // error report), propagation pass (not kept in a resume state: 0 for resumed layers).
  double phase_seconds[4] = {0, 0, 0, 0};
  // Parts of them: the SmoothAttention / down_proj searches (with the diagnostics) in phase 1, and in phase 2 the
  // wait for the error reports (two matmuls per linear, run in the background while the next linears quantize).
  double search_seconds = 0.0, report_seconds = 0.0;
  std::vector<LinearReport> linears;
};

using QuantizedLinear = std::variant<W4PerChannelWeight, W4G128Weight>;

struct QoqResult {
  std::map<std::string, QuantizedLinear> linears;  // by HF module name
  std::vector<LayerReport> layers;
  nlohmann::json settings;  // QoqOptions::to_json() plus what calibration found (tokens, windows)
  double seconds = 0.0;
};

// Runs the pipeline on `model` (FP32, every linear an FpLinear; modified in place: it ends up holding the
// transformed FP weights). The calibration windows come from sample_calibration*.
QoqResult run_qoq(model::Model& model, const CalibrationSet& calib, const QoqOptions& opt);

// One decoder layer of the pipeline (steps (1)-(4) above, plus the quantized propagation): decoder layer
// `model_layer` of the runner's model, whose FP32 weights `lw` are already rotated when opt.rotate, is calibrated,
// transformed in place and quantized; its linears are added to `out` as model.layers.<layer>.* and the runner's
// hidden states advance to the layer's output. run_qoq calls it with model_layer == layer; the streaming path
// (streaming.h) with a one-layer model (model_layer 0) whose layer weights are replaced for every layer.
LayerReport quantize_layer(model::Model& model, CalibrationRunner& runner, int model_layer, int layer, int num_layers,
                           LayerWeights& lw, const QoqOptions& opt, Progress& bar,
                           std::map<std::string, QuantizedLinear>& out);
// The calibration runner opt asks for: the GPU one (opt.cuda) or LayerRunner on the model's backend.
std::unique_ptr<CalibrationRunner> make_runner(model::Model& model, const CalibrationSet& calib,
                                               const QoqOptions& opt);
// Adds what the searches chose, per layer, to result.settings (after the last layer).
void finish_settings(QoqResult& result, const QoqOptions& opt);

// Adds everything to a checkpoint writer: the quantized linears, the FP tensors (embeddings, norms, lm_head;
// stored F16) and the metadata (variant, QoQ settings, source model, HF config with tie_word_embeddings as the
// transformed model has it).
QuantizedCheckpointWriter make_checkpoint(const model::Model& model, const QoqResult& result,
                                          const nlohmann::json& hf_config, const std::string& source_model);

// Everything of the transformed FP model a checkpoint needs besides the quantized linears.
struct FpTensors {
  Tensor embed, final_norm, lm_head;                // F32
  std::vector<Tensor> input_norm, post_norm;        // F32 [hidden] per layer
  std::map<std::string, Tensor> biases;             // F32, by linear name (q/k/v with attention_bias)
};
FpTensors fp_tensors_of(const model::Model& model);  // from a model run_qoq transformed

// make_checkpoint (pipeline.h) from the parts: the same tensors in the same order.
QuantizedCheckpointWriter make_checkpoint(const FpTensors& fp, const QoqResult& result, int num_layers,
                                          const nlohmann::json& hf_config, const std::string& source_model);

// A per-layer quantization error table (one line per linear) for the end of `qserve quantize`.
std::string format_report(const QoqResult& result);

}  // namespace qs::quant::qoq
